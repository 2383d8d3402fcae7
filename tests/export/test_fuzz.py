"""Fuzzing the bundle loader with raw byte mutations, and the accumulators at their extremes (resealed,
structured mutations: ``test_untrusted.py``)."""
import random

import numpy as np
import pytest

import shiftquant as sq
from shiftquant.errors import BundleError
from shiftquant.export.format.bundle import parse_bundle, read_bundle, write_bundle
from shiftquant.export.ops.shift_kernels import shift_add as _shift_add
from shiftquant.export.reference.runtime import Runtime
from tests.export.models import quantized, quantized_pixels

RAW_MUTATIONS = 8000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An integer-only MLP taking uint8 pixels: every integer width and the pixel input are fuzzed."""
    model, batches, px = quantized_pixels("mlp", 0, act_shift_bits=2)
    path = tmp_path_factory.mktemp("fuzz") / "mlp.sqb"
    p = np.concatenate([batches["calibration"], batches["zeros"], batches["saturated"]])
    rt = sq.export(model, path, px.to_float(p[:1]), px)
    assert rt.manifest["integer_only"]
    return path, p, rt.run(p)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    b = bytearray(data)
    if kind == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        b = b[: rng.randrange(len(b))]
    elif kind == 2:  # insert junk
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:  # overwrite a run
        pos = rng.randrange(len(b))
        b[pos:pos + 8] = bytes(rng.randrange(256) for _ in range(8))
    return bytes(b)


def test_raw_mutations_are_refused_or_identical(tiny):
    path, x, expected = tiny
    data = path.read_bytes()
    rng = random.Random(0)
    refused = 0
    for _ in range(RAW_MUTATIONS):
        mutated = _mutate_bytes(data, rng)
        try:
            manifest, tensors = parse_bundle(mutated)
        except BundleError:
            refused += 1
            continue
        # Only a mutation that changed nothing can pass the checksum.
        assert mutated == data
        assert np.array_equal(Runtime(manifest, tensors).run(x), expected)
    assert refused >= RAW_MUTATIONS * 0.99


def test_a_manifest_that_hides_float_is_refused_when_run(tmp_path):
    """integer_only is enforced: a node that computes in float but is not listed stops the run."""
    model, x = quantized("cnn", 0, act_shift_bits=2)
    rt = sq.export(model, tmp_path / "cnn.sqb", x)
    assert rt.float_ops and not rt.manifest["integer_only"]
    manifest, tensors = read_bundle(tmp_path / "cnn.sqb")
    write_bundle(tmp_path / "lie.sqb", {**manifest, "float_ops": [], "integer_only": True}, tensors)
    with pytest.raises(BundleError, match=f"{rt.float_ops[0]}.*does not list it in float_ops"):
        sq.load_bundle(tmp_path / "lie.sqb").run(x.numpy())
    write_bundle(tmp_path / "half.sqb", {**manifest, "integer_only": True}, tensors)
    with pytest.raises(BundleError, match="contradicts float_ops"):
        sq.load_bundle(tmp_path / "half.sqb")


def test_a_declared_range_narrower_than_the_proof_is_refused_at_load(tiny, tmp_path):
    path, p, _ = tiny
    manifest, tensors = read_bundle(path)
    node = next(n for n in manifest["nodes"] if n.get("requant"))
    proven = node["range"]
    node["range"] = [proven[0], proven[0]]
    write_bundle(tmp_path / "narrow.sqb", manifest, tensors)
    with pytest.raises(BundleError, match=f"{node['name']}.*declares the range .{proven[0]}, {proven[0]}., but its "
                                          "values reach"):
        sq.load_bundle(tmp_path / "narrow.sqb")
    node["dtype"], node["range"] = "int8", [0, 300]
    write_bundle(tmp_path / "wide.sqb", manifest, tensors)
    with pytest.raises(BundleError, match="int8 holds"):
        sq.load_bundle(tmp_path / "wide.sqb")


def test_pixel_bundles_take_pixels_only(tiny):
    path, p, expected = tiny
    rt = sq.load_bundle(path)
    assert np.array_equal(rt.run(p.astype(np.int32)), expected)
    with pytest.raises(BundleError, match="integer pixels 0..255"):
        rt.run(p.astype(np.float32))
    bad = p.astype(np.int32)
    bad[0, 0, 0, 0] = 256
    with pytest.raises(BundleError, match="outside 0..255"):
        rt.run(bad)


@pytest.mark.parametrize("name,bits,acts", [("resnet20", 3, False), ("resnet20", 2, True), ("cnn", 3, True)])
def test_accumulators_at_the_extremes_match_a_wide_integer_reference(name, bits, acts, tmp_path):
    model, batches, px = quantized_pixels(name, 0, weight_shift_bits=bits, act_shift_bits=bits if acts else None)
    rt = sq.export(model, tmp_path / "m.sqb", px.to_float(batches["calibration"][:1]), px)
    # The saturation extremes run within every declared type (checked on every run).
    rt.run(np.concatenate([batches["zeros"], batches["saturated"], batches["salt_pepper"]]))
    for node in rt.nodes:
        if not node["op"].startswith("shift_"):
            continue
        w = rt.weights[node["name"]].reshape(node["weight_shape"][0], -1)
        lo, hi = node["input_range"]  # the codes this layer's input can take, proven by the exporter
        for a in (np.where(w > 0, hi, lo), np.where(w > 0, lo, hi), np.full_like(w, hi), np.full_like(w, lo)):
            # Column c of the patch matrix is channel c's adversarial input: the diagonal is its sum.
            acc = _shift_add(a.T[None].copy(), w)[0]
            got = [int(acc[c, c]) for c in range(w.shape[0])]
            wide = [sum(int(wi) * int(ai) for wi, ai in zip(w[c], a[c])) for c in range(w.shape[0])]
            assert got == wide
            assert max(abs(v) for v in wide) <= node["accumulator_bound"]
        bits = node["accumulator_bits"]
        assert node["accumulator_bound"] < 2 ** (bits - 1)
        info = np.iinfo(node["accumulator_dtype"])
        assert info.min <= -node["accumulator_bound"] and node["accumulator_bound"] <= info.max
