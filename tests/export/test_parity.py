"""Exact parity (atol = 0) between the hard PyTorch model and the bundle's runtime under deploy_exact,
and integer-only execution watched, not declared."""
import contextlib
import types

import numpy as np
import pytest
import torch

import shiftquant as sq
from tests.export.models import build, pixel_batches, quantized, quantized_pixels

# Models per configuration; each configuration draws its own seeds, so the suite covers 6 x these
# distinct models of each kind (BatchNorm statistics and gains, negative ones included).
SEEDS = {"mlp": 8, "cnn": 8, "plain": 4, "resnet20": 5, "resnet18": 1}
CONFIGS = [(bits, acts) for bits in (1, 2, 3) for acts in (False, True)]


def hard_and_runtime(name, seed, bits, acts, tmp_path):
    """The hard model, its pixel batches and PixelInput, and its bundle (pixels in)."""
    model, batches, px = quantized_pixels(name, seed, weight_shift_bits=bits, act_shift_bits=bits if acts else None)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / f"{name}.sqb", px.to_float(batches["calibration"][:1]), px)
    return model, batches, px, rt


def assert_exact(model, batches, px, rt, label):
    """On every batch (calibration, held out, saturation extremes): the integer logits x unit equal
    PyTorch's logits (atol 0), and the runtime computed in float exactly in the nodes the manifest
    lists (a loaded runtime refuses float elsewhere, and records where it ran)."""
    p = np.concatenate(list(batches.values()))
    with torch.no_grad():
        ref = model(px.to_float(p)).numpy()
    rt.observed_float_ops.clear()
    ints, unit = rt.run_int(p)
    out = (ints.astype(np.float64) * unit).astype(np.float32)
    assert np.array_equal(out, ref), f"{label}: max |diff| {np.abs(out - ref).max()}"
    assert rt.observed_float_ops == rt.float_ops, label
    assert not np.allclose(out, out.mean())  # a real, varied output
    return ints, out


@pytest.mark.parametrize("name", sorted(SEEDS))
@pytest.mark.parametrize("bits,acts", CONFIGS, ids=[f"s{b}-{'WA' if a else 'W'}" for b, a in CONFIGS])
def test_runtime_equals_pytorch_exactly(name, bits, acts, tmp_path):
    first = CONFIGS.index((bits, acts)) * SEEDS[name]
    for seed in range(first, first + SEEDS[name]):
        model, batches, px, rt = hard_and_runtime(name, seed, bits, acts, tmp_path)
        assert rt.manifest["exact"]
        assert_exact(model, batches, px, rt, f"{name} seed {seed}")


@contextlib.contextmanager
def float_made_impossible(monkeypatch):
    """Every float kernel the runtime could reach raises (integer max pooling is let through)."""
    from shiftquant.export import ops
    from shiftquant.export.reference import runtime

    def refuse(what):
        def kernel(*args, **kwargs):
            raise AssertionError(f"{what} ran in an integer-only bundle")
        return kernel

    int_max_pool = ops.pool.F.max_pool2d

    def max_pool(x, *args, **kwargs):
        assert not x.is_floating_point(), "float max pooling ran in an integer-only bundle"
        return int_max_pool(x, *args, **kwargs)

    refused = types.SimpleNamespace(max_pool2d=max_pool, **{
        k: refuse(k) for k in ("batch_norm", "relu", "conv2d", "linear", "avg_pool2d", "adaptive_avg_pool2d", "pad",
                               "layer_norm", "gelu", "hardswish", "hardsigmoid", "silu")})
    with monkeypatch.context() as m:
        for family in (ops.pool, ops.norm, ops.conv, ops.elementwise, ops.movement, ops.quantizers, ops.shift):
            if hasattr(family, "F"):
                m.setattr(family, "F", refused)
        qf = ops.quantizers.QF
        m.setattr(ops.quantizers, "QF", types.SimpleNamespace(ROUNDINGS=qf.ROUNDINGS,
                                                              shift_quantize=refuse("shift_quantize"),
                                                              uniform_quantize=refuse("uniform_quantize")))
        m.setattr(runtime, "pixels_to_float", refuse("pixels_to_float"))
        m.setattr(runtime.Runtime, "in_float", lambda self, node, *a: pytest.fail(f"{node['name']} computed in float"))
        yield


@pytest.mark.parametrize("name", ["mlp", "plain", "cnn", "resnet20", "resnet18"])
def test_integer_only_bundles_run_with_float_made_impossible(name, tmp_path, monkeypatch):
    """uint8 pixels in, integer logits out: no float kernel runs, every node is integer-typed."""
    for acts in (False, True):
        model, batches, px, rt = hard_and_runtime(name, 0, 2, acts, tmp_path)
        assert rt.float_ops == [] and rt.manifest["integer_only"], rt.float_ops
        assert all(n["dtype"] != "float32" for n in rt.nodes)
        with float_made_impossible(monkeypatch):
            ints, out = assert_exact(model, batches, px, rt, name)
            assert np.array_equal(rt.run(np.concatenate(list(batches.values()))), out)
        assert ints.dtype == np.dtype(rt.nodes[-1]["dtype"])
        shift = [n for n in rt.nodes if n["op"].startswith("shift_")]
        assert shift[0].get("input_thresholds") and shift[-1].get("int_output")
        if name in ("mlp", "plain"):  # every shift layer but the last hands the next its codes
            assert all(n.get("requant") for n in shift[:-1]) and all(n.get("input_codes") for n in shift[1:])
        elif name == "cnn":  # a residual add on the grid, then 2x2 average pooling as window sums
            assert [n.get("shifts") is not None for n in rt.nodes if n["op"] == "add"] == [True]
            assert [n.get("integer") for n in rt.nodes if n["op"] == "avg_pool2d"] == [True]
            assert shift[-1].get("input_thresholds")  # the head reads the window sums through thresholds
        else:  # the residual grid: integer adds aligned by shifts, global pooling as a sum
            adds = [n for n in rt.nodes if n["op"] == "add"]
            assert adds and all(len(n["shifts"]) == 2 and min(n["shifts"]) == 0 for n in adds)
            assert [n.get("integer") for n in rt.nodes if n["op"] == "adaptive_avg_pool2d"] == [True]
            # every layer reading the stream (block convs, downsamples, fc) reads it through thresholds
            readers = [n for n in shift if not n.get("input_codes")]
            assert len(readers) > 3 and all(n.get("input_thresholds") for n in readers)


def test_integer_types_are_narrow_and_post_relu_codes_unsigned(tmp_path):
    _, _, _, rt = hard_and_runtime("resnet20", 0, 2, True, tmp_path)
    types = {n["name"]: n["dtype"] for n in rt.nodes}
    assert types["x"] == "uint8"
    residual = [n for n in rt.nodes if n.get("requant") and n["requant"]["levels"][0] == -128]
    assert residual and all(len(n["requant"]["levels"]) == 256 for n in residual)  # an 8-bit grid
    assert all(types[n["name"]] == "int8" for n in residual)
    # Post-ReLU values are unsigned: codes handed on, and the stream after an add (two 8-bit
    # values aligned by shifts need 9 bits or more: uint16 where the shifts are not 0).
    relus = [n for n in rt.nodes if n["op"] == "relu"]
    assert relus and all(n["dtype"].startswith("uint") and n["range"][0] == 0 for n in relus)
    codes = [n for n in rt.nodes if n.get("requant") and n["range"][0] >= 0]  # block convs: BN, ReLU, codes
    assert codes and all(types[n["name"]] == "uint8" for n in codes)
    assert all(n["accumulator_dtype"] in ("int16", "int32") for n in rt.nodes if n["op"].startswith("shift_"))


@pytest.mark.parametrize("name", ["mlp", "plain", "resnet20"])
def test_trained_models_are_exact_on_held_out_digits(name, tmp_path):
    """Trained weights (a few SGD steps while eps goes to 0) on the digits' own 0..16 pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, labels = digits.images.astype(np.uint8)[:, None], torch.from_numpy(digits.target)
    px = sq.PixelInput((0.3,), (0.4,), 16)
    model, _ = build(name, 0)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [px.to_float(pixels[:256])])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 16
    for step in range(steps):
        sq.set_slope(model, 1 - step / (steps - 1))
        idx = torch.randint(0, 1400, (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(px.to_float(pixels[idx.numpy()])), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    rt = sq.export(model, tmp_path / "trained.sqb", px.to_float(pixels[:1]), px)
    assert rt.manifest["integer_only"]
    held_out = {"held_out": pixels[1400:1600], **{k: v for k, v in pixel_batches((2, 1, 8, 8), 0, px).items()
                                                   if k in ("zeros", "saturated", "salt_pepper")}}
    assert_exact(model, held_out, px, rt, f"trained {name}")


def test_requantization_equals_the_float_chain_on_every_accumulator(tmp_path):
    """Thresholds against the float chain they replace, over a layer's whole accumulator range."""
    from shiftquant.export.ops.shift_kernels import level_index
    from shiftquant.export.passes.requant import find_chains, thresholds
    from shiftquant.export.reference.runtime import Runtime
    from shiftquant.export.trace.exporter import Exporter

    model, x = quantized("mlp", 3, weight_shift_bits=2, act_shift_bits=2)
    exporter = Exporter(model)
    exporter.build(x)
    manifest, tensors = exporter.unfolded
    rt = Runtime(manifest, tensors, strict=False)
    (s, chain, t), *_ = find_chains(manifest)
    assert [n["op"] for n in chain] == ["batch_norm", "relu"]
    thr, direction = thresholds(rt, s, chain, t)
    assert (direction < 0).any() and (direction > 0).any()  # the test model has negative BN gains
    bound = s["accumulator_bound"]
    acc = np.arange(-bound, bound + 1, dtype=np.int64)[:, None].repeat(s["weight_shape"][0], 1)
    value = rt.dequantize(s, acc)
    for node in chain:
        value = rt.float_op(node, [value])
    q = t["input_quantizer"]["quantizer"]
    levels = np.round(np.asarray(q["levels"]) / q["resolution"]).astype(np.int64)
    via_thresholds = levels[level_index(acc, thr, direction, -1)]
    assert np.array_equal(via_thresholds, rt.quantize_input(value, t["input_quantizer"]))


def test_every_quantized_layer_runs_as_shift_add(tmp_path):
    *_, rt = hard_and_runtime("resnet20", 0, 2, True, tmp_path)
    shift_layers = [n for n in rt.nodes if n["op"].startswith("shift_")]
    assert len(shift_layers) == 22  # 19 convs + 2 downsample + fc
    assert all(n["accumulator_bound"] < 2**24 and n["accumulator_bits"] <= 32 for n in shift_layers)
    assert not any(n["op"] in ("conv2d", "linear") for n in rt.nodes)


def test_shift_add_conv_matches_integer_convolution():
    from shiftquant.export.ops.shift_kernels import shift_add_conv
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (2, 4, 7, 9))
    w = rng.choice([0, 1, -1, 2, -2, 8, -64], size=(6, 2, 3, 3))
    acc = shift_add_conv(a, w, (2, 1), (1, 2), (1, 2), groups=2)
    ref = torch.nn.functional.conv2d(torch.from_numpy(a).double(), torch.from_numpy(w).double(), stride=(2, 1),
                                     padding=(1, 2), dilation=(1, 2), groups=2)
    assert np.array_equal(acc, ref.numpy().astype(np.int64))


def test_accumulator_beyond_float32_is_refused(tmp_path):
    from torch import nn
    model = nn.Sequential(nn.Flatten(), nn.Linear(4096, 2))
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3))
    with torch.no_grad():
        model[1].weight.fill_(1.0)  # every weight at the top level, every input at the top level
    x = torch.full((1, 1, 64, 64), 100.0)
    sq.calibrate(model, [x])
    with pytest.raises(sq.ExportError, match="2\\^24"):
        sq.export(model.eval(), tmp_path / "big.sqb", x)
