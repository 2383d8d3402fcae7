"""QONNX export (the ``[fpga]`` extra): the hard model as ``Quant`` nodes on float values, through
QONNX's cleanup and shape inference, executed by ``qonnx.core.onnx_exec`` as PyTorch computes it."""
import json

import numpy as np
import pytest
import torch

import shiftquant as sq
from shiftquant.errors import ExportError
from tests.export.models import build

pytest.importorskip("qonnx", reason="QONNX export needs the [fpga] extra: pip install -e '.[fpga]'")

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.general.intquant import int_quant  # noqa: E402

from shiftquant.export.qonnx.lower import PO2_WEIGHTS, QUANT, int_quant_params, run_qonnx  # noqa: E402


def _hard(name: str, seed: int, act_shift_bits, images: int = 100, **recipe):
    model, x = build(name, seed)
    torch.manual_seed(seed)
    calibration = torch.randn(32, *x.shape[1:])
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=act_shift_bits,
                                                   **recipe))
    sq.calibrate(model, [calibration])
    sq.set_slope(model, 0.0)
    return model, torch.randn(images, *x.shape[1:]) * 1.5


@pytest.mark.parametrize("name,act", [("resnet20", 3), ("resnet20", None), ("plain", 3), ("plain", None)])
def test_the_thresholds_form_folds_batchnorm_and_runs_as_the_bundle(name, act, tmp_path):
    """The default form: BatchNorm, biases and activation quantizers folded into ``MultiThreshold``
    nodes as the bundle folds them, integer weights on ``Quant`` constants, no comparisons left.
    qonnx's executor gives the bundle's logits bit for bit on 100 held-out inputs (so PyTorch's up
    to float rounding, top-1 equal)."""
    model, x = _hard(name, 1, act)
    path = tmp_path / "m.onnx"
    assert sq.export_qonnx(model, path, x[:1]) < 1e-4
    got = run_qonnx(path, x.numpy())
    bundle = sq.export(model, tmp_path / "m.sqb", x[:1])
    assert np.array_equal(got, bundle.run(x.numpy()))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    wrapper = ModelWrapper(str(path))
    kinds = {n.op_type for n in wrapper.graph.node}
    assert "MultiThreshold" in kinds and not kinds & {"BatchNormalization", "GreaterOrEqual", "Greater", "Gather"}
    requantized = sum(1 for n in bundle.nodes if n.get("requant")) + sum(1 for n in bundle.nodes if n.get("input_thresholds"))
    assert len(wrapper.get_nodes_by_op_type("MultiThreshold")) == requantized + 1  # + the float input's quantizer
    for node in wrapper.get_nodes_by_op_type("MultiThreshold"):
        table = wrapper.get_initializer(node.input[1])
        assert np.all(np.diff(table, axis=1) >= 0)  # ascending per channel, as FINN expects
    weights = [q for q in wrapper.get_nodes_by_op_type(QUANT) if wrapper.get_initializer(q.input[0]) is not None]
    assert len(weights) == sum(1 for m in model.modules() if isinstance(m, (sq.QuantConv2d, sq.QuantLinear)))
    for q in weights:  # the bundle's integer weights on scale 1, within their bits
        w, scale, bits = (wrapper.get_initializer(q.input[i]) for i in (0, 1, 3))
        assert scale == 1 and np.array_equal(w, np.round(w)) and np.abs(w).max() <= 2 ** (int(bits) - 1) - 1
    listed = json.loads({p.key: p.value for p in wrapper.model.metadata_props}[PO2_WEIGHTS])
    assert sorted(listed) == sorted(q.output[0] for q in weights)


def test_a_vit_runs_in_the_thresholds_form_as_the_bundle(tmp_path):
    """A ViT (integer LayerNorm, shiftmax, tokens channels-last): the float form has no mapping for
    its integer LayerNorm; the thresholds form gives the bundle's logits bit for bit, its
    ``x * x`` kept intact through QONNX's cleanup and the class token's folded batch run per image."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=12, patch_size=4, in_chans=1, num_classes=10,
                              depth=1, embed_dim=32, num_heads=2)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [torch.randn(16, 1, 12, 12)])
    sq.set_slope(model, 0.0)
    x = torch.randn(3, 1, 12, 12)
    sq.export_qonnx(model.eval(), tmp_path / "m.onnx", x[:1], check=False)
    assert np.array_equal(run_qonnx(tmp_path / "m.onnx", x.numpy()), sq.export(model, tmp_path / "m.sqb", x[:1]).run(x.numpy()))
    layouts = {next(a.s for a in n.attribute if a.name == "data_layout")
               for n in ModelWrapper(str(tmp_path / "m.onnx")).get_nodes_by_op_type("MultiThreshold")}
    assert b"NWC" in layouts  # the tokens' requantizations, channels last


def test_an_input_quantizer_is_one_multithreshold_on_every_float32_value(tmp_path):
    """The float input's quantizer as ``MultiThreshold``: its thresholds are the smallest float32
    values reaching each level (found by bisection), so it equals the quantizer at and beside each
    of them and on random values, for power-of-two and uniform grids, rounding to nearest or up,
    with and without a zero level, signed or not."""
    from shiftquant.export.ops.quantizers import level_ints, quantize_input
    from shiftquant.export.qonnx.lower import input_thresholds

    rng = np.random.default_rng(0)
    for recipe in [{"act_shift_bits": 2}, {"act_shift_bits": 3, "act_rounding": "ceil", "act_zero": False},
                   {"act_shift_bits": None, "act_uniform_bits": 4}, {"act_shift_bits": 2, "act_signed": False,
                                                                     "act_full_codes": True}]:
        model, x = _hard("plain", 2, recipe.pop("act_shift_bits"), images=1, **recipe)
        spec = next(n for n in sq.export(model, tmp_path / "m.sqb", x).nodes if n["op"] == "shift_conv2d")["input_quantizer"]
        table = input_thresholds(spec)
        assert table is not None and np.all(np.diff(table) >= 0), recipe
        t = np.unique(table[0])
        probe = np.concatenate([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf)),
                                rng.normal(0, 8 * t.std() + 1, 1000)]).astype(np.float32)
        want = quantize_input(None, torch.from_numpy(probe), spec)
        assert np.array_equal(level_ints(spec).min() + (probe[:, None] >= table[0][None, :]).sum(1), want), recipe


def test_the_forms_are_named_when_one_is_wrong(tmp_path):
    model, x = _hard("plain", 0, 3, images=1)
    with pytest.raises(sq.ConfigError, match="form='multithreshold'.*'thresholds'.*'float'"):
        sq.export_qonnx(model, tmp_path / "m.onnx", x, form="multithreshold")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name,act", [("resnet20", 3), ("resnet20", None), ("plain", 3), ("plain", None)])
def test_the_float_form_runs_as_the_hard_model(name, act, tmp_path):
    """The float form (hls4ml's): ResNet-20 and a plain CNN, W3A3 (power-of-two activations) and
    weight-only: qonnx's executor gives PyTorch's logits up to float rounding on 100 held-out
    inputs, top-1 equal."""
    model, x = _hard(name, 1, act)
    path = tmp_path / "m.onnx"
    assert sq.export_qonnx(model, path, x[:1], form="float") < 1e-4
    got = run_qonnx(path, x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    wrapper = ModelWrapper(str(path))  # as written: already through qonnx's cleanup, shapes inferred
    assert all(wrapper.get_tensor_shape(v.name) is not None for v in wrapper.graph.value_info)
    quants = wrapper.get_nodes_by_op_type(QUANT)
    weights = [q for q in quants if wrapper.get_initializer(q.input[0]) is not None]
    shift_layers = sum(1 for m in model.modules() if isinstance(m, (sq.QuantConv2d, sq.QuantLinear)))
    assert len(weights) == shift_layers
    listed = json.loads({p.key: p.value for p in wrapper.model.metadata_props}[PO2_WEIGHTS])
    assert sorted(listed) == sorted(q.output[0] for q in weights)  # zero-free deploy weights: all +-2^e
    for q in weights:  # lossless: the constant is integers on its power-of-two scale, within its bits
        w, scale, bits = (wrapper.get_initializer(q.input[i]) for i in (0, 1, 3))
        assert np.frexp(scale)[0].flat[0] == 0.5 and np.array_equal(w / scale, np.round(w / scale))
        assert np.abs(w / scale).max() <= 2 ** (int(bits) - 1) - 1
    activations = [q for q in quants if q not in weights]
    assert activations and all(
        next(a.s for a in q.attribute if a.name == "rounding_mode") in (b"HALF_UP", b"ROUND") for q in activations)


def test_a_quantizer_and_its_quant_node_agree_on_ties():
    """The uniform activation quantizer rounds half away from zero: ``HALF_UP`` reproduces it
    at every tie, ``ROUND`` (half to even) would not."""
    spec = {"quantizer": {"kind": "uniform", "bits": 4, "rounding": "nearest", "zero": True, "signed": True,
                          "full_codes": False, "levels": [k / 8 for k in range(-8, 8)], "resolution": 0.125,
                          "code_bits": 4}, "policy": "learned_pot", "channel_dim": 1, "log2_scale": -1}
    form = int_quant_params(spec)
    assert form == {"signed": 1, "narrow": 0, "bitwidth": 4}
    unit = np.float32(2.0 ** -1 * 0.125)
    ties = (np.arange(-9, 9) + 0.5).astype(np.float32) * unit
    from shiftquant.export.ops.quantizers import quantize_input

    want = quantize_input(None, torch.from_numpy(ties), spec) * unit
    bits = np.float32(form["bitwidth"])
    assert np.array_equal(int_quant(ties, unit, np.float32(0), bits, 1, 0, "HALF_UP"), want)
    assert not np.array_equal(int_quant(ties, unit, np.float32(0), bits, 1, 0, "ROUND"), want)
    power_of_two = dict(spec, quantizer=dict(spec["quantizer"], kind="shift"))
    assert int_quant_params(power_of_two) is None  # no Quant node rounds onto power-of-two levels


def test_scales_that_are_not_powers_of_two_stay_per_channel(tmp_path):
    """``weight_scale: pretrained_std``: a per-channel scale on each weight ``Quant``, the graph
    still exact, and no tensor claimed as powers of two; an offset is refused by name."""
    model, x = _hard("plain", 0, 3, weight_scale="pretrained_std", deploy_exact=False)
    path = tmp_path / "m.onnx"
    assert sq.export_qonnx(model, path, x, form="float") < 1e-4
    wrapper = ModelWrapper(str(path))
    assert json.loads({p.key: p.value for p in wrapper.model.metadata_props}[PO2_WEIGHTS]) == []
    scales = [wrapper.get_initializer(q.input[1]) for q in wrapper.get_nodes_by_op_type(QUANT)
              if wrapper.get_initializer(q.input[0]) is not None]
    assert all(s.size > 1 for s in scales)
    model, x = _hard("plain", 0, 3, weight_scale="pretrained_std", weight_keep_mean=True, deploy_exact=False)
    with pytest.raises(ExportError, match="weight_keep_mean"):
        sq.export_qonnx(model, tmp_path / "m.onnx", x[:1], form="float")


def test_cli_writes_qonnx_with_or_without_a_bundle(trained_digits, tmp_path, capsys):
    """``shiftquant export CKPT --qonnx FILE`` (the seed recipe's ceil-rounded, zero-free quantizers),
    in the thresholds form and with ``--qonnx-form float`` (their comparisons and a recording
    ``Quant``), then with a bundle beside it."""
    from shiftquant.cli import main

    path = tmp_path / "digits.onnx"
    assert main(["export", trained_digits["checkpoint"], "--qonnx", str(path)]) == 0
    out = capsys.readouterr().out
    diff = float(out.split("max |diff| = ")[1].split()[0])
    assert path.exists() and diff < 1e-4, out
    assert ModelWrapper(str(path)).get_nodes_by_op_type("MultiThreshold")
    assert main(["export", trained_digits["checkpoint"], "--qonnx", str(path), "--qonnx-form", "float"]) == 0
    assert float(capsys.readouterr().out.split("max |diff| = ")[1].split()[0]) < 1e-4
    assert not ModelWrapper(str(path)).get_nodes_by_op_type("MultiThreshold")
    assert main(["export", trained_digits["checkpoint"], str(tmp_path / "d.sqb"), "--qonnx", str(path)]) == 0
    assert (tmp_path / "d.sqb").exists()
    assert main(["export", trained_digits["checkpoint"]]) == 2
    assert "OUTPUT" in capsys.readouterr().err
