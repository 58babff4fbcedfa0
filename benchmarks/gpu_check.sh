#!/usr/bin/env bash
# One short device session: GPU throughput of the paper's models at the paper's 224 px, oilwater_jax against the
# same networks in PyTorch, in the same processes. Writes JSON and logs to $OUT (default benchmarks/results).
#   bash benchmarks/gpu_check.sh                # on a machine with one CUDA GPU, JAX (CUDA) and PyTorch (CUDA)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.is_available())" \
  | tee -a "$OUT/gpu_info.txt"
python3 benchmarks/bench_train.py --models resnet18,resnet50 --sizes 224 --impls lax --batch 128 --torch-device cuda \
  --repeats 10 --budget 8 --note "GPU, float32 (TF32 convolutions in both frameworks' defaults)" \
  --out "$OUT/bench_train_gpu.json" 2>&1 | tee "$OUT/bench_train_gpu.log"
python3 benchmarks/bench_train.py --models resnet18,resnet50 --sizes 224 --impls lax --batch 128 --torch-device cuda \
  --dtype bfloat16 --repeats 10 --budget 8 --note "GPU, bfloat16 compute (PyTorch autocast)" \
  --out "$OUT/bench_train_gpu_bf16.json" 2>&1 | tee "$OUT/bench_train_gpu_bf16.log"
python3 benchmarks/bench_attacks.py --model resnet18 --size 224 --poisons 48 --targets 5 --examples 128 --chunk 64 \
  --torch-device cuda --out "$OUT/bench_attacks_gpu.json" 2>&1 | tee "$OUT/bench_attacks_gpu.log"
