"""ONNX: the bundle graph lowered op by op through the registry; onnxruntime computes what the
reference runtime computes (integers bit for bit); a graph it refuses is an ExportError."""
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import shiftquant as sq
from shiftquant.errors import ExportError
from shiftquant.export import ops
from shiftquant.export.format.bundle import read_bundle
from shiftquant.export.onnx.lower import Builder, run_onnx, to_onnx, write_onnx
from shiftquant.export.ops.quantizers import quantize_input
from shiftquant.export.ops.schema import OnnxMap
from shiftquant.export.reference.runtime import Runtime
from shiftquant.export.trace.exporter import _quantizer_spec
from tests.export.models import quantized_pixels

DATA = Path(__file__).parent / "data" / "v3"
EXPECTED = np.load(DATA / "expected.npz")
LABELS = sorted({k.split(".")[0] for k in EXPECTED.files})


def _mlp_head_model(preset: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    sq.quantize_model(model, sq.QuantRecipe.preset(preset, layers=["*"], layer_types=["conv2d", "linear"],
                                                   kernel_sizes=None, weight_shift_bits=2, act_shift_bits=2))
    x = torch.randn(16, 1, 8, 8)
    sq.calibrate(model, [x])
    return model, x


def test_every_op_maps_to_onnx_in_its_definition():
    assert all(isinstance(d.onnx, OnnxMap) and d.onnx.label and callable(d.onnx.lower)
               for d in ops.REGISTRY.values())


@pytest.mark.parametrize("label", LABELS)
def test_a_bundle_runs_in_onnxruntime_as_in_the_reference(label, tmp_path):
    """The stored bundles (parity models at W2A2 and W3, integer-only; a 28-op graph with float
    ops): integer-only ones bit for bit, float ops up to float32 rounding."""
    rt = sq.load_bundle(DATA / f"{label}.sqb")
    write_onnx(rt, tmp_path / "m.onnx")
    pixels = EXPECTED[f"{label}.pixels"]
    got, ref = run_onnx(tmp_path / "m.onnx", pixels), rt.run(pixels)
    assert got.shape == ref.shape and got.dtype == np.float32
    if rt.manifest["integer_only"]:
        assert np.array_equal(got, ref), label
    else:
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    model = onnx.load(tmp_path / "m.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8  # the pixels themselves


def test_a_pixel_bundle_of_a_residual_network_in_onnxruntime(tmp_path):
    """A W3A3 ResNet-20 (deploy, integer-only, another seed than the stored bundles'): on random,
    held-out and saturated pixels its logits equal the reference's and the PyTorch hard model's."""
    model, batches, px = quantized_pixels("resnet20", 1, "deploy", weight_shift_bits=3, act_shift_bits=3)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "r.sqb", torch.zeros(1, *batches["calibration"].shape[1:]), px)
    assert rt.manifest["integer_only"]
    write_onnx(rt, tmp_path / "r.onnx")
    for pixels in batches.values():
        got = run_onnx(tmp_path / "r.onnx", pixels)
        with torch.no_grad():
            assert np.array_equal(got, model(px.to_float(pixels)).numpy())
        assert np.array_equal(got, rt.run(pixels))


@pytest.mark.parametrize("preset", ["dbssq", "all"])
def test_standardized_linear_head_runs_in_onnxruntime(preset, tmp_path):
    """Float input, the standardize policy on a Linear's (N, C) input."""
    model, x = _mlp_head_model(preset)
    assert sq.export_onnx(model, tmp_path / "m.onnx", x) < 1e-4


def test_a_graph_onnxruntime_refuses_is_an_export_error(tmp_path, monkeypatch):
    import onnxruntime

    def refuse(*args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.Fail("[ONNXRuntimeError] : 1 : FAIL : bad graph")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    model, x = _mlp_head_model("all")
    with pytest.raises(ExportError, match="onnxruntime refuses the exported graph .*bad graph.*check=False"):
        sq.export_onnx(model, tmp_path / "m.onnx", x)


def test_integers_beyond_float32_are_refused_by_name(tmp_path):
    manifest, tensors = read_bundle(DATA / "mlp_s2a.sqb")
    layer = next(n for n in manifest["nodes"] if n["op"] == "shift_linear")
    rt = Runtime(manifest, tensors)
    rt.weights[layer["name"]] = rt.weights[layer["name"]] << 20  # what a bundle with 2^20 weights would prove
    with pytest.raises(ExportError, match=f"{layer['name']}.*2\\^24"):
        to_onnx(rt)


def _quantize_in_onnx(x: np.ndarray, spec: dict) -> np.ndarray:
    b = Builder(SimpleNamespace(nodes=[], tensor=None))
    out = b._threshold_quantize("input", spec)
    graph = helper.make_graph(b.nodes, "q", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [len(x)])], b.initializers)
    import onnxruntime as ort

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _boundary_values(spec: dict) -> np.ndarray:
    """Random values, every level and threshold with its float32 neighbours, zeros and extremes."""
    from shiftquant.export.ops.quantizers import boundaries

    mags, thresholds = boundaries(spec["quantizer"])
    edges = np.asarray(mags + thresholds + [m / 2 for m in mags], dtype=np.float32)
    edges = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0))])
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(5000).astype(np.float32) * 2, edges, -edges,
                             np.float32([0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38])])
    return values.astype(np.float32)


@pytest.mark.parametrize("cls,bits", [(sq.ShiftQuantizer, 1), (sq.ShiftQuantizer, 3), (sq.UniformQuantizer, 4)])
def test_the_threshold_form_equals_the_runtime_quantizer(cls, bits):
    """Every layout (rounding, zero, sign, full codes): the same level integer for every value,
    thresholds and their float32 neighbours included."""
    for rounding, zero, signed, full in itertools.product(("ceil", "nearest"), (False, True), (False, True),
                                                           (False, True)):
        if full and (signed or not zero):
            continue
        q = cls(bits, rounding, zero, signed, full_codes=full)
        spec = {"quantizer": _quantizer_spec(q), "policy": "learned_pot", "log2_scale": 0, "channel_dim": 1}
        x = _boundary_values(spec)
        want = quantize_input(None, torch.from_numpy(x), spec)
        assert np.array_equal(_quantize_in_onnx(x, spec), want.astype(np.float32)), (cls, bits, rounding, zero,
                                                                                       signed, full)


def _mapping_alone(mapping, node: dict, x: np.ndarray, tensors: dict | None = None) -> np.ndarray:
    """An op's ONNX mapping on its own, on integers held as float32 (as the graph holds them)."""
    import onnxruntime as ort

    b = Builder(SimpleNamespace(nodes=[], tensor=lambda key: tensors[key]))
    out = mapping(b, node, ["x"])
    graph = helper.make_graph(b.nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def test_the_integer_transformer_ops_compute_their_definitions_in_onnxruntime():
    """shiftmax and integer_layer_norm in int64 ONNX equal their Python definitions on rows that
    reach every branch (zeros, constant rows, extremes, a common power of two, mixed signs)."""
    from shiftquant.nn import shiftmax as SM
    from shiftquant.nn.integer_norm import normalized_ints
    from tests.export.test_c_tokens_and_moves import _rows

    rng = np.random.default_rng(1)
    top = (1 << 24) - 1  # what float32 holds exactly
    for n in (1, 3, 192):
        x = _rows(rng, n, top)
        signs = rng.choice([-1, 1], n).astype(np.int8)
        node = {"name": "ln", "normalized_shape": [n], "signs": "s"}
        got = _mapping_alone(ops.get("integer_layer_norm").onnx.lower, node, x, {"s": signs})
        assert np.array_equal(got, normalized_ints(torch.from_numpy(x)).numpy() * signs), n
    for n, scale, unit, bits in [(1, 0.125, 2.0**-6, 3), (65, 0.125, 2.0**-9, 4), (16, 5.0, 1.0, 2),
                                 (9, 1e-3, 2.0**-20, 4), (5, 1e-6, 2.0**-24, 1)]:
        s = _rows(rng, n, top)
        node = {"name": "sm", "dim": -1, "scale": scale, "unit": unit, "shift_bits": bits}
        got = _mapping_alone(ops.get("shiftmax").onnx.lower, node, s)
        k, f = SM.exponent_multiplier(scale, unit)
        assert np.array_equal(got, SM.shiftmax_codes(torch.from_numpy(s), k, f, bits).numpy()), (n, scale)


def test_a_vit_runs_in_onnxruntime_bit_for_bit(tmp_path):
    """timm ViT-tiny, integer-only: LayerNorm, shiftmax and the attention's matmuls on integers."""
    from tests.export.test_mobile import PIXELS, exported

    model, rt, path, images = exported("timm vit_tiny_patch16_224", tmp_path, images=8)
    write_onnx(rt, tmp_path / "v.onnx")
    got = run_onnx(tmp_path / "v.onnx", images)
    with torch.no_grad():
        assert np.array_equal(got, model(PIXELS.to_float(images)).numpy())
