"""torchvision state_dict -> Flax conversion: exact key sets, equivalence with a PyTorch ResNet, and a pickle that must
not run."""
import os, pickle, re, subprocess, sys, zipfile
from pathlib import Path

import numpy as np
import pytest
import jax, jax.numpy as jnp

from oilwater_jax.core import OilwaterError
from oilwater_jax.convert import convert_state_dict, load_pretrained, read_state_dict
from oilwater_jax.models import count_params, make_model

TORCH_REASON = "PyTorch is not installed: the equivalence tests need it to write a reference .pth (pip install torch)"
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def torchvision_shapes(arch: str) -> dict[str, tuple]:
    "torchvision's resnet18/resnet50 state_dict shapes, written from its documented layout (no torch needed)."
    bottleneck = arch == "resnet50"
    expansion = 4 if bottleneck else 1
    shapes = {}
    def bn(name, c):
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                       f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})
    shapes["conv1.weight"] = (64, 3, 7, 7); bn("bn1", 64)
    inplanes = 64
    for i, n in enumerate((3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)):
        planes = 64 * 2**i
        for j in range(n):
            p, stride = f"layer{i + 1}.{j}", 2 if i > 0 and j == 0 else 1
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1); bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1); bn(f"{p}.bn3", planes * 4)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3); bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
            if stride != 1 or inplanes != planes * expansion:
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"], shapes["fc.bias"] = (1000, inplanes), (1000,)
    return shapes


def n_params(shapes) -> int:
    return sum(int(np.prod(s)) for k, s in shapes.items() if not re.search(r"running_|num_batches", k))


@pytest.mark.parametrize("arch, entries, params", [("resnet18", 122, 11_689_512), ("resnet50", 320, 25_557_032)])
def test_torchvision_key_set_converts(arch, entries, params):
    shapes = torchvision_shapes(arch)
    assert len(shapes) == entries and n_params(shapes) == params
    rng = np.random.default_rng(0)
    sd = {k: (np.array(7) if k.endswith("num_batches_tracked") else rng.normal(size=s).astype(np.float32))
          for k, s in shapes.items()}
    variables = convert_state_dict(sd, make_model(arch, num_classes=1000), source=arch)
    assert count_params(variables["params"]) == params
    assert count_params(variables["batch_stats"]) == sum(int(np.prod(s)) for k, s in shapes.items() if "running_" in k)
    kernel = np.asarray(variables["params"]["layer2_0"]["conv1"]["kernel"])
    np.testing.assert_array_equal(kernel, sd["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]), sd["fc.weight"].T)
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["layer4_0"]["downsample_1"]["var"]),
                                  sd["layer4.0.downsample.1.running_var"])


def test_hand_written_torch_resnet_has_torchvision_keys():
    pytest.importorskip("torch", reason=TORCH_REASON)
    from torch_resnet import make_torch_resnet
    for arch in ("resnet18", "resnet50"):
        sd = make_torch_resnet(arch).state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == torchvision_shapes(arch)


def _torch_eval_logits(model, x):
    import torch
    xt = torch.from_numpy(((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(0, 3, 1, 2))
    with torch.no_grad(): return model.eval()(xt).numpy()


def test_converted_resnet18_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from safetensors.numpy import save_file
    from torch_resnet import make_torch_resnet, randomize_
    torch.manual_seed(0)
    reference = randomize_(make_torch_resnet("resnet18", num_classes=1000), seed=1)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    np.savez(tmp_path / "resnet18.npz", **arrays)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp_path / "resnet18.safetensors"))

    x = np.random.default_rng(0).uniform(size=(4, 64, 64, 3))
    expected = _torch_eval_logits(reference, x)
    model, variables = load_pretrained(tmp_path / "resnet18.pth", "resnet18", num_classes=1000, replace_head=False)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for suffix in ("pth", "npz", "safetensors"):
        if suffix != "pth":
            variables = convert_state_dict(read_state_dict(tmp_path / f"resnet18.{suffix}"), model)
        logits = np.asarray(forward(variables, jnp.asarray(x, jnp.float32)))
        rel = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
        print(f"{suffix}: relative logit error {rel:.2e}")
        assert rel < 1e-5, (suffix, rel)
        np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(expected, -1))


def test_pth_reader_does_not_import_torch(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torch.save({"conv1.weight": torch.arange(24.).reshape(2, 3, 2, 2).transpose(2, 3), "n": torch.tensor(3)},
               tmp_path / "w.pth")
    code = ("import sys; from oilwater_jax.convert import read_state_dict; sd = read_state_dict(sys.argv[1]); "
            "import numpy as np; w = np.arange(24.).reshape(2, 3, 2, 2).swapaxes(2, 3); "
            "assert (sd['conv1.weight'] == w).all() and sd['conv1.weight'].dtype == np.float32; "
            "assert int(sd['n']) == 3; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pth")], check=True,
                   env={**os.environ, "OILWATER_JAX_CACHE": "0"})


class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as z: z.writestr("archive/data.pkl", pickle.dumps({"w": _Evil(marker)}, protocol=2))
    with pytest.raises(OilwaterError, match=r"evil\.pth.*(posix|os)\.system"):
        read_state_dict(evil)
    bare = tmp_path / "bare.pth"
    bare.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(OilwaterError, match="bare pickle"):
        read_state_dict(bare)
    assert not marker.exists()


def _unicode(text: str) -> bytes:  # pickle opcode BINUNICODE
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


def test_out_of_bounds_tensor_view_is_refused(tmp_path):
    # {'w': _rebuild_tensor_v2(<storage of 4 floats>, 0, (4, 4), (4, 1), False, {})}, written opcode by opcode
    storage = (b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") + _unicode("cpu") + b"K\x04tQ")
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00(K\x04K\x04t(K\x04K\x01t\x89}tR")
    data_pkl = b"\x80\x02}" + _unicode("w") + tensor + b"s."
    path = tmp_path / "oob.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl); z.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(OilwaterError, match="outside its storage of 4 elements"):
        read_state_dict(path)
    with zipfile.ZipFile(path, "w") as z:  # the same tensor as a 2x2 view fits and is read
        z.writestr("archive/data.pkl", data_pkl.replace(b"(K\x04K\x04t(K\x04K\x01t", b"(K\x02K\x02t(K\x02K\x01t"))
        z.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(read_state_dict(path)["w"], [[0, 1], [2, 3]])


def test_expanded_tensor_is_refused_before_allocating(tmp_path):
    # a 1x1 storage viewed as 10000 x 20000 with strides (0, 0): 800 MB if it were copied, from a file of under 1 KB
    storage = (b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") + _unicode("cpu") + b"K\x01tQ")
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00(M\x10\x27M\x20\x4et(K\x00K\x00t\x89}tR")
    path = tmp_path / "expanded.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}" + _unicode("w") + tensor + b"s.")
        z.writestr("archive/data/0", np.zeros(1, np.float32).tobytes())
    assert path.stat().st_size < 1500
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OilwaterError, match=r"expanded\.pth: a tensor of size \(10000, 20000\) .* reuses a storage of 1"):
        read_state_dict(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing near 800 MB was allocated


def test_storage_larger_than_its_entry_is_refused_before_reading(tmp_path):
    storage = (b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") + _unicode("cpu") + b"J\x00\x00\x00\x40tQ")
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00(K\x01t(K\x01t\x89}tR"
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}" + _unicode("w") + tensor + b"s.")
        z.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(OilwaterError, match=r"short\.pth: storage 'archive/data/0' has 16 bytes, expected 1073741824"):
        read_state_dict(path)
