"""Model factory and local weight loading (no code execution, clear refusals)."""
import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from shiftquant.errors import CheckpointError, ConfigError
from shiftquant.models import build_model, load_weights, read_state_dict, resnet20


def test_resnet20_shape_and_size():
    model = resnet20(num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert "layer3.2.conv2" in names and "layer2.0.downsample.0" in names


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18", "timm:resnet18", "resnet20"])
def test_build_by_name(name):
    model = build_model(name, num_classes=7, in_chans=3)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name"):
        build_model("resnet9000", num_classes=10)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "lightning", "module_prefix", "safetensors"])
def test_load_weights_from_common_containers(tmp_path, wrap):
    src = torchvision.models.resnet18(num_classes=5)
    sd = src.state_dict()
    path = tmp_path / "w.pt"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap in ("state_dict", "model"):
        torch.save({wrap: sd, "epoch": 3}, path)
    elif wrap == "lightning":
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hyper_parameters": {}}, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = build_model("resnet18", num_classes=5, weights=str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_wrong_architecture_refused_and_nothing_changed(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34(num_classes=5).state_dict(), path)
    model = torchvision.models.resnet18(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(path)


def test_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "none.pt")


def test_the_plain_cnns_build_by_name_and_classify_28_px():
    from shiftquant.models.plain_cnn import lenet5

    for name in ("lenet5", "lenet5_avg", "vgg_small"):
        model = build_model(name, 10, 1).eval()
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="pool.*max or avg"):
        lenet5(pool="lp")


def _safetensors_bytes(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    import json
    import struct
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


def test_hostile_safetensors_files_are_refused_as_checkpoint_errors(tmp_path):
    """Any bytes a downloaded .safetensors may hold become a CheckpointError naming the file (never
    safetensors' own error type), and a tensor of the wrong kind is refused by name."""
    import numpy as np
    model = resnet20(num_classes=10, in_chans=1)
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))
    whole = good.read_bytes()
    t = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    cases = {
        "random": np.random.default_rng(0).bytes(200),
        "empty": b"",
        "header past the end": _safetensors_bytes({"w": t}, bytes(16), length=10**6),
        "header too large": _safetensors_bytes({"w": t}, bytes(16), length=2**63),
        "header not json": _safetensors_bytes(b"{not json", bytes(16)),
        "header not utf-8": _safetensors_bytes(b'{"\xff\xfe": 1}', bytes(16)),
        "offsets past the data": _safetensors_bytes({"w": dict(t, data_offsets=[0, 4096])}, bytes(16)),
        "unknown dtype": _safetensors_bytes({"w": dict(t, dtype="Q7")}, bytes(16)),
        "shape against offsets": _safetensors_bytes({"w": dict(t, shape=[1000, 1000])}, bytes(16)),
        "negative shape": _safetensors_bytes({"w": dict(t, shape=[-2, -2])}, bytes(16)),
        "truncated": whole[:len(whole) // 2],
        "header only": whole[:8 + int.from_bytes(whole[:8], "little")],
    }
    twice = b'{"w": %s, "w": %s}' % (json.dumps(t).encode(), json.dumps(dict(t, shape=[4])).encode())
    cases["a tensor name twice"] = _safetensors_bytes(twice, bytes(16))
    for why, blob in cases.items():
        path = tmp_path / f"{why.replace(' ', '_')}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=path.name):
            read_state_dict(path)
    with pytest.raises(CheckpointError, match="duplicate key 'w'"):  # safetensors alone keeps the last
        read_state_dict(tmp_path / "a_tensor_name_twice.safetensors")
    ints = {k: (v.to(torch.int32) if k == "conv1.weight" else v) for k, v in model.state_dict().items()}
    save_file(ints, str(tmp_path / "ints.safetensors"))
    before = model.conv1.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"conv1\.weight: expected .*float32, found .*int32"):
        load_weights(model, tmp_path / "ints.safetensors")
    assert torch.equal(model.conv1.weight, before)  # nothing loaded
    long = dict(model.state_dict(), **{"x\n" * 100000: torch.zeros(1)})  # a hostile name: the message stays short
    save_file(long, str(tmp_path / "long.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected 1 keys") as refused:
        load_weights(model, tmp_path / "long.safetensors")
    assert len(str(refused.value)) < 1000
    floats = {k: (v.float() if k.endswith("num_batches_tracked") else v) for k, v in model.state_dict().items()}
    save_file(floats, str(tmp_path / "floats.safetensors"))  # a float counter for an integer buffer: loads
    load_weights(model, tmp_path / "floats.safetensors")
