"""`conv_impl="onednn"` (`oilwater_jax.onednn`): a whole ResNet computes the same loss, parameter gradients, second-order
input gradients and per-example gradients as with XLA's own convolutions, and every convolution of the compiled step
really is a oneDNN call.

Both sides compute in float32 with different summation orders: the tolerances (relative L2 error 1e-4 over all
parameters) are float32 rounding accumulated over 20 layers, about 100x below any real difference (a kernel read in
the wrong layout, or a transposed gradient, gives errors of order 1). Skipped where oneDNN is not installed (the `dev`
extra installs it).
"""
import os
import numpy as np
import pytest
import jax, jax.numpy as jnp, optax

from oilwater_jax.core import OilwaterError
from oilwater_jax.models import make_model, init_model, resolve_conv_impl, CONV_IMPL_ENV
from oilwater_jax.onednn import onednn_available
from oilwater_jax.per_example import per_example_grads

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN is not installed: pip install 'oilwater-jax[onednn]'")


def rel_l2(a, b):
    a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def setup(impl, name="resnet18_w16", size=32, n=8, **kw):
    model = make_model(name, 2, conv_impl=impl, **kw)
    variables = init_model(model, jax.random.key(0), (size, size, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(n, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, n), jnp.int32)
    return model, variables, x, y


def loss_fn(model, variables, x, y):
    def loss(params, x):
        logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss


@needs_onednn
def test_train_step_gradients_equal_lax():
    results = {}
    for impl in ("onednn", "lax"):
        # one block per stage (a ResNet-10 of width 16) keeps the compilation short and still has every geometry:
        # the 7x7 stem, 3x3 at strides 1 and 2, the 1x1 downsamples and the tiny-output layers
        model, variables, x, y = setup(impl, stage_sizes=(1, 1, 1, 1))
        loss = loss_fn(model, variables, x, y)
        # gradient matching differentiates a gradient with respect to the input: a second-order path
        second = lambda p, x: jax.grad(lambda x: optax.tree.norm(jax.grad(loss)(p, x)) ** 2)(x)
        both = jax.jit(lambda p, x: (*jax.value_and_grad(loss)(p, x), second(p, x)))  # one compilation per lowering
        results[impl] = both(variables["params"], x)
    (v1, g1, s1), (v0, g0, s0) = results["onednn"], results["lax"]
    assert abs(float(v1) - float(v0)) < 1e-5
    assert rel_l2(g1, g0) < 1e-4, rel_l2(g1, g0)
    assert rel_l2(s1, s0) < 1e-4, rel_l2(s1, s0)


@needs_onednn
def test_every_large_convolution_is_a_onednn_call():
    # resnet18_w16 at 32 px: the stem (7x7, 16x16 output), layer1's four 3x3 convolutions (8x8) and layer2's four (4x4)
    # run on oneDNN; layer3 and layer4 (outputs of at most 2x2) take im2col and the 1x1 downsamples a matmul, as in
    # the hybrid lowering (`models.conv2d`).
    model, variables, x, y = setup("onednn")
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
    assert hlo.count("oilwater_onednn_fwd") == 9
    grad_hlo = jax.jit(jax.grad(loss_fn(model, variables, x, y))).lower(variables["params"], x).as_text()
    assert grad_hlo.count("oilwater_onednn_bwd_weights") == 9
    assert grad_hlo.count("oilwater_onednn_bwd_data") == 8  # the stem needs no input gradient


@needs_onednn
def test_per_example_gradients_equal_lax():
    out = {}
    for impl in ("onednn", "lax"):
        model, variables, x, y = setup(impl, n=6)
        out[impl] = per_example_grads(model.apply, variables, np.asarray(x), np.asarray(y), wrt="params", chunk_size=3)
    assert rel_l2(out["onednn"], out["lax"]) < 1e-4


def test_auto_follows_the_environment(monkeypatch):
    monkeypatch.setenv(CONV_IMPL_ENV, "lax")
    assert resolve_conv_impl("auto") == "lax"
    assert resolve_conv_impl("hybrid") == "hybrid"  # an explicit choice wins
    monkeypatch.setenv(CONV_IMPL_ENV, "onednnn")
    with pytest.raises(OilwaterError, match="OILWATER_CONV_IMPL"):
        resolve_conv_impl("auto")
    monkeypatch.delenv(CONV_IMPL_ENV)
    assert resolve_conv_impl("auto") == "hybrid"  # this test runs on the CPU
