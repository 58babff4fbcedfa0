"""Group robustness methods and poisoning defenses, reproduced in JAX: a notebook-first research package for arXiv 2504.02142.

Modules:

- `oilwater_jax.attack_runs`: From a table row's `RunConfig` to its poisoned training set, its shared gradient-matching stage and its attack-success numbers, the same way for every method.
- `oilwater_jax.cli`: `oilwater`: list, inspect and prepare the data sets, train ERM, reproduce the paper's tables, render them and build the docs, with errors that say what to type instead.
- `oilwater_jax.convert`: Read a user's torchvision ResNet state_dict (`.pth` without PyTorch, `.npz`, `.safetensors`) into Flax variables, optionally with a fresh head.
- `oilwater_jax.corpus_ablation`: An ablation of the pretraining behind the cpu preset: ERM and JTT on the Waterbirds-like set from scratch and fine-tuned from a quarter, a half and the whole generated corpus.
- `oilwater_jax.data`: A procedural Waterbirds-like data set with exactly Waterbirds' groups: bird shape is the label, the background is the shortcut. Generated with NumPy from a seed, cached once, and the default data set of every experiment.
- `oilwater_jax.epic`: Cluster every class in gradient space, drop the medoids that nobody else joins, repeat during training (Yang et al., 2022); with the paper's interventions that never drop, or drop early, the under-represented samples.
- `oilwater_jax.epic_jtt`: EPIC flags potential poisons, JTT keeps them out of its upsampled set: can a defense and a group robustness method be combined? Appendix A.4, Table 12.
- `oilwater_jax.experiments`: Every table and figure of the paper as a list of rows: what each row means, the paper's numbers with their source, the qualitative claim the row supports, and presets that make a row runnable.
- `oilwater_jax.federated`: Robust aggregation rules (coordinate median, trimmed mean, SparseFed) against FedAvg, with clients trained in one jitted, `vmap`ped program: Appendix A.3's Table 9, and what the same rules buy against malicious clients.
- `oilwater_jax.flower`: Our aggregation rules as a Flower strategy and our local training as a Flower client app, so that a federation with real clients runs on Flower's Deployment Engine (SuperLink and SuperNodes), not on code of ours.
- `oilwater_jax.george`: Cluster each class in the feature space of an ERM model and run group DRO over the clusters (Sohoni et al., 2020); with the paper's interventions that keep poisons out of, or force them into, the smallest cluster.
- `oilwater_jax.gradient_matching`: Witches' Brew (Geiping et al., 2021): clean-label poisons whose training gradient points where the targets' adversarial gradient points, crafted in pure JAX.
- `oilwater_jax.group_dro`: Minimising the worst group's loss by online mirror ascent on group weights (Sagawa et al., 2020): a pure state/update pair, a jitted step that computes per-group losses, and training selected by validation WGA.
- `oilwater_jax.jtt`: Train an early-stopped ERM model, upsample the training samples it gets wrong, train again from scratch (Liu et al., 2021); with the paper's interventions that keep poisons out of, or force them into, the upsampled set.
- `oilwater_jax.metrics`: Accuracy per group, worst-group accuracy, the training-proportion-weighted average, and the identification and elimination factors.
- `oilwater_jax.models`: ResNets with torchvision's exact structure in Flax linen, small variants that train fast on a CPU, and a convolution lowering that avoids XLA:CPU's slow cases.
- `oilwater_jax.onednn`: XLA:CPU's convolution kernel is what keeps a full ResNet-18 behind PyTorch on a CPU; this module calls oneDNN, PyTorch's own CPU convolution library, from inside a jitted JAX step through XLA's foreign-function interface.
- `oilwater_jax.per_example`: The loss gradient of every training sample with respect to the logits, the last layer or all parameters, in bounded memory, optionally sketched to a few thousand numbers.
- `oilwater_jax.pipeline`: From a preset's `RunConfig` to the things every method needs: the cell's data, each stage's optimiser, its keys, and its initial weights.
- `oilwater_jax.poisons`: Poisoned training sets that remember where every sample came from, the dirty-label backdoor (DLBD) and the sub-population attack (SA), and their attack success rates.
- `oilwater_jax.pretrain`: An ImageNet stand-in for the cpu preset: many object classes on many background families, generated from a seed, and the cpu ResNet pretrained on it (Orbax checkpoint in the cache), so that a preset can fine-tune as the paper does.
- `oilwater_jax.real_data`: Waterbirds and CelebA from the files users actually have: parsed strictly, prepared once into an array_record cache, and loaded as a `GroupDataset`.
- `oilwater_jax.runner`: Methods register themselves by name; the runner executes the missing cells (row × seed) of a table, caches shared stages, survives interruptions and records every result with its provenance.
- `oilwater_jax.sharding`: The train step, evaluation and per-example gradients with the batch split over all local devices (a `jax.sharding` mesh), with no change to the methods.
- `oilwater_jax.strip`: Superimpose an input with clean images and average the entropy of the predictions: a backdoored input keeps its target label whatever is blended in, so its entropy is low (Gao et al., 2019). Appendix A.3, Table 11.
- `oilwater_jax.tables`: Our mean ± std over seeds beside the paper's, with a mark for each of the paper's claims, in Markdown and HTML; and Figure 1 as a PNG.
- `oilwater_jax.theory`: The formulas of our loss-based identification results as small functions: the linear-Gaussian model's margins, AUC and IDNF curves, the removal curve and the exact rates of other removal rules, the amplified poison share, the DKW band and cross-fitting, the twin-world distances, reference robust aggregators, and the simulation helpers that check them.
- `oilwater_jax.train`: A jitted train step with per-sample loss weights, batched group evaluation, model selection by validation WGA, checkpoints, and deterministic runs from an explicit key."""

__version__ = "0.1.0"
