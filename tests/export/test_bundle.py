"""The bundle file: bit packing, integrity checks, size, and refusal of damaged files."""
import io
import os
import random
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftquant as sq
from shiftquant.cli import bundle_summary, main
from shiftquant.errors import BundleError
from shiftquant.export.format.bundle import (
    FORMAT_VERSION,
    MAGIC,
    pack_codes,
    parse_bundle,
    unpack_codes,
)
from shiftquant.models import resnet20
from tests.export.models import quantized


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 255), min_size=0, max_size=300))
def test_pack_unpack_roundtrip_at_code_width(bits, values):
    codes = np.array([v % (1 << bits) for v in values], dtype=np.int64)
    packed = pack_codes(codes, bits)
    assert packed.size == (len(codes) * bits + 7) // 8
    assert np.array_equal(unpack_codes(packed, bits, len(codes)), codes)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model, x = quantized("cnn", 0, act_shift_bits=2)
    path = tmp_path_factory.mktemp("b") / "cnn.sqb"
    sq.export(model, path, x)
    return path, x


def test_every_byte_flip_in_a_sample_is_refused(small_bundle):
    path, _ = small_bundle
    data = path.read_bytes()
    rng = random.Random(0)
    positions = sorted(set(rng.sample(range(len(data)), min(300, len(data)))) | {0, 8, 12, 20, len(data) - 1})
    for pos in positions:
        for bit in (0, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(BundleError):
                parse_bundle(bytes(bad))


def test_every_truncation_in_a_sample_is_refused(small_bundle):
    data = small_bundle[0].read_bytes()
    for cut in sorted(set(random.Random(1).sample(range(len(data)), 200)) | {0, 1, 19, 20, len(data) - 1}):
        with pytest.raises(BundleError, match="truncated"):
            parse_bundle(data[:cut])
    with pytest.raises(BundleError, match="truncated or padded"):
        parse_bundle(data + b"\0")


def test_wrong_magic_and_version_are_named(small_bundle):
    data = small_bundle[0].read_bytes()
    with pytest.raises(BundleError, match="bad magic"):
        parse_bundle(b"NOTABUND" + data[8:])
    newer = MAGIC + struct.pack("<I", FORMAT_VERSION + 1) + data[12:]
    with pytest.raises(BundleError, match=f"version {FORMAT_VERSION + 1}"):
        parse_bundle(newer)


def test_resealed_tampering_is_caught_by_the_manifest_checks(small_bundle, tmp_path):
    """A file rewritten with a valid checksum but inconsistent content is refused at load."""
    from shiftquant.export.format.bundle import read_bundle, write_bundle
    manifest, tensors = read_bundle(small_bundle[0])
    node = next(n for n in manifest["nodes"] if n["op"] == "shift_conv2d")
    t = dict(tensors)
    t[node["weight_codes"]] = t[node["weight_codes"]][:-1]
    write_bundle(tmp_path / "t1.sqb", manifest, t)
    with pytest.raises(BundleError, match="packed codes"):
        sq.load_bundle(tmp_path / "t1.sqb")
    broken = {**manifest, "outputs": ["nowhere"]}
    write_bundle(tmp_path / "t2.sqb", broken, tensors)
    with pytest.raises(BundleError, match="output 'nowhere'"):
        sq.load_bundle(tmp_path / "t2.sqb")


def _sealed(blob: bytes) -> bytes:
    """A bundle around a safetensors ``blob``, with a valid checksum (as ``write_bundle`` seals one)."""
    import hashlib
    import zlib
    body = zlib.compress(blob, 9)
    data = struct.pack("<8sIQ", MAGIC, FORMAT_VERSION, len(body)) + body
    return data + hashlib.sha256(data).digest()


def test_duplicate_json_keys_are_refused_in_the_manifest_and_the_tensor_header(small_bundle):
    """Two equal keys in one JSON object mean the first to some readers, the last to Python's:
    a resealed bundle holding them, in its manifest or in its safetensors header, is refused."""
    import json

    from safetensors.numpy import save

    from shiftquant.export.format.bundle import read_bundle
    manifest, tensors = read_bundle(small_bundle[0])
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    assert parse_bundle(_sealed(save(tensors, metadata={"manifest": text})))[0] == manifest  # the sealing is right
    doubled = text.replace('"format":', '"format":"other","format":', 1)
    with pytest.raises(BundleError, match="duplicate key 'format'"):
        parse_bundle(_sealed(save(tensors, metadata={"manifest": doubled})))
    blob = save(tensors, metadata={"manifest": text})
    n = struct.unpack_from("<Q", blob)[0]
    header = blob[8:8 + n].decode()
    name = sorted(tensors)[0]
    entry = header[header.index(f'"{name}":'):]
    entry = entry[:entry.index("}") + 1]
    twice = header.replace(entry, f"{entry},{entry}", 1).encode()
    twice += b" " * (-len(twice) % 8)
    with pytest.raises(BundleError, match=f"duplicate key '{name}'"):
        parse_bundle(_sealed(struct.pack("<Q", len(twice)) + twice + blob[8 + n:]))


def test_loaded_bundle_runs_and_rejects_wrong_input_shape(small_bundle):
    path, x = small_bundle
    rt = sq.load_bundle(path)
    assert rt.run(x.numpy()).shape == (4, 10)
    with pytest.raises(BundleError, match="input shape"):
        rt.run(np.zeros((1, 1, 9, 9), dtype=np.float32))


def test_w3_resnet20_bundle_is_at_least_9x_smaller_than_float32(tmp_path, capsys):
    model = resnet20(num_classes=10, in_chans=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    float_bytes = len(buf.getvalue())
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    x = torch.randn(2, 1, 28, 28)
    sq.calibrate(model, [x])
    path = tmp_path / "r20.sqb"
    sq.export(model.eval(), path, x)
    assert float_bytes / os.path.getsize(path) >= 9
    s = bundle_summary(str(path))
    assert s["compression"] >= 9 and len(s["rows"]) == 22
    assert main(["summary", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "smaller" in printed and "layer3.2.conv2" in printed and "shift-adds" in printed
    # Every MAC of a deploy ResNet-20 is a shift-add, as many as sq.summary counts on the model.
    assert s["macs"]["shift_add"] == s["macs"]["total"] == sq.summary(model, x).to_dict()["shift_add_macs"]
    # Float input: its quantization in the stem is observed, and reported, as float.
    assert s["float_ops"] == ["conv1"] and not s["integer_only"] and s["input"] == "float32"
    assert "uint8" in s["types"] and "int8" in s["types"]


def test_cli_export_run_summary_on_a_trained_checkpoint(trained_digits, tmp_path, capsys):
    bundle = tmp_path / "digits.sqb"
    onnx_path = tmp_path / "digits.onnx"
    from shiftquant.data import DigitsDataModule

    assert main(["export", trained_digits["checkpoint"], str(bundle), "--onnx", str(onnx_path)]) == 0
    assert bundle.exists() and onnx_path.exists()
    assert "against the PyTorch hard model on 4 check inputs: top-1 agreement 100.0 %" in capsys.readouterr().out
    assert main(["summary", str(bundle)]) == 0
    assert "agreement with the PyTorch hard model at export: top-1 100.0 % of 4" in capsys.readouterr().out
    # The data module's normalization makes a pixel bundle: digits' 0..16 values go in untouched.
    pixels = sq.PixelInput.of(DigitsDataModule)
    assert sq.load_bundle(bundle).nodes[0].get("pixels") == (pixels.spec() if pixels else None)
    assert main(["run", str(bundle), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "eps = 0" in out
    assert main(["export", str(tmp_path / "missing.ckpt"), str(bundle)]) == 2


def test_seed_recipe_runtime_agrees_with_pytorch_on_the_test_set(trained_digits, tmp_path):
    """Seed recipe (float stem, scales and residuals): agreement, not exactness, is promised."""
    from shiftquant.checkpoint import load_model
    from shiftquant.data import DigitsDataModule

    model = load_model(trained_digits["checkpoint"])
    dm = DigitsDataModule()
    dm.setup()
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])
    rt = sq.export(model, tmp_path / "seed.sqb", x[:1])
    assert not rt.manifest["exact"]
    sq.set_slope(model, 0.0)
    with torch.no_grad():
        ref = model(x).numpy()
    out = rt.run(x.numpy())
    agreement = (out.argmax(1) == ref.argmax(1)).mean()
    max_diff = float(np.abs(out - ref).max())
    print(f"seed recipe on digits: top-1 agreement {agreement:.4f}, max logit diff {max_diff:.3g}")
    assert agreement >= 0.995


def test_onnx_matches_pytorch(tmp_path):
    model, x = quantized("resnet20", 0, "dbssq", act_shift_bits=2)
    assert sq.export_onnx(model, tmp_path / "m.onnx", x) < 1e-4
    model, x = quantized("cnn", 0, act_shift_bits=2)
    assert sq.export_onnx(model, tmp_path / "d.onnx", x) < 1e-4


def test_mean_preserving_weights_export_with_agreement(tmp_path):
    """weight_keep_mean adds a per-channel term: the runtime adds offset x window sum (grouped too)."""
    model, x = quantized("cnn", 3, "all", weight_keep_mean=True, act_shift_bits=3)
    rt = sq.export(model, tmp_path / "mean.sqb", x)
    sq.set_slope(model, 0.0)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(rt.run(x.numpy()) - ref).max() < 1e-3


def test_run_split_from_reproduces_a_runs_printed_hard_accuracy_to_the_image(tmp_path, capsys):
    """A run with data.test_subset tests a seeded random subset; --split-from rebuilds it."""
    from shiftquant.train.run import train
    from tests.helpers import compose_cfg

    run = tmp_path / "run"
    results = train(compose_cfg(["experiment=quickstart", "quant=deploy", "quant.act_shift_bits=2",
                                 "float_stage.epochs=4", "trainer.max_epochs=2", "data.test_subset=150"], run))
    assert results["split_sizes"]["test"] == 150
    bundle = tmp_path / "m.sqb"
    assert main(["export", results["checkpoint"], str(bundle)]) == 0
    capsys.readouterr()
    assert main(["run", str(bundle), "--split-from", str(run)]) == 0
    out = capsys.readouterr().out
    correct = round(results["hard_test_acc"] * 150)
    assert f"({correct}/150)" in out and "reproduced to the image" in out, out
    assert main(["run", str(bundle), "--split-from", str(run), "--limit", "10"]) == 2
    assert main(["run", str(bundle), "--split-from", str(tmp_path)]) == 2  # no results.json there
