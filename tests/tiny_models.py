"Models small enough for unit tests: one strided convolution, BatchNorm, a pooled linear head named `fc`."
import flax.linen as nn


class TinyCNN(nn.Module):
    "A few hundred parameters; the head is `fc` like the package's ResNets (so `pretrain.with_new_head` applies)."
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = nn.Conv(8, (3, 3), strides=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        features = x.mean(axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return (logits, features) if return_features else logits
