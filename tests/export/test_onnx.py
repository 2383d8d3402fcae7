"""ONNX export: standardized Linear heads load in onnxruntime; a graph it refuses is an ExportError."""
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import ExportError


def _mlp_head_model(preset: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    sq.quantize_model(model, sq.QuantRecipe.preset(preset, layers=["*"], layer_types=["conv2d", "linear"],
                                                   kernel_sizes=None, weight_shift_bits=2, act_shift_bits=2))
    x = torch.randn(16, 1, 8, 8)
    sq.calibrate(model, [x])
    return model, x


@pytest.mark.parametrize("preset", ["dbssq", "all"])
def test_standardized_linear_head_runs_in_onnxruntime(preset, tmp_path):
    """The standardize policy on a Linear's (N, C) input used to export Transpose(perm=[0, -1])."""
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
