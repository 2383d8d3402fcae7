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
def test_qonnx_runs_as_the_hard_model(name, act, tmp_path):
    """ResNet-20 and a plain CNN, W3A3 (power-of-two activations) and weight-only: qonnx's
    executor gives PyTorch's logits up to float rounding on 100 held-out inputs, top-1 equal."""
    model, x = _hard(name, 1, act)
    path = tmp_path / "m.onnx"
    assert sq.export_qonnx(model, path, x[:1]) < 1e-4
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
    assert sq.export_qonnx(model, path, x) < 1e-4
    wrapper = ModelWrapper(str(path))
    assert json.loads({p.key: p.value for p in wrapper.model.metadata_props}[PO2_WEIGHTS]) == []
    scales = [wrapper.get_initializer(q.input[1]) for q in wrapper.get_nodes_by_op_type(QUANT)
              if wrapper.get_initializer(q.input[0]) is not None]
    assert all(s.size > 1 for s in scales)
    model, x = _hard("plain", 0, 3, weight_scale="pretrained_std", weight_keep_mean=True, deploy_exact=False)
    with pytest.raises(ExportError, match="weight_keep_mean"):
        sq.export_qonnx(model, tmp_path / "m.onnx", x[:1])


def test_cli_writes_qonnx_with_or_without_a_bundle(trained_digits, tmp_path, capsys):
    """``shiftquant export CKPT --qonnx FILE`` (the seed recipe's ceil-rounded, zero-free quantizers:
    their comparisons and a recording ``Quant``), then the same with a bundle beside it."""
    from shiftquant.cli import main

    path = tmp_path / "digits.onnx"
    assert main(["export", trained_digits["checkpoint"], "--qonnx", str(path)]) == 0
    out = capsys.readouterr().out
    diff = float(out.split("max |diff| = ")[1].split()[0])
    assert path.exists() and diff < 1e-4, out
    assert main(["export", trained_digits["checkpoint"], str(tmp_path / "d.sqb"), "--qonnx", str(path)]) == 0
    assert (tmp_path / "d.sqb").exists()
    assert main(["export", trained_digits["checkpoint"]]) == 2
    assert "OUTPUT" in capsys.readouterr().err
