"""Inverted-residual networks integer-only: MobileNetV2 (timm and torchvision) and EfficientNet-Lite;
in C, MobileNetV2 and, with its squeeze-excite blocks, MobileNetV3.

With the deploy preset the inverted-residual stream goes on the residual grid as a ResNet's does
(timm's ``BatchNormAct2d`` too: its dropout and activation follow the grid quantizer), ReLU6 clips
integers (a bound above a fine grid's top clips nothing and is dropped), and the last BatchNorm,
which reaches the global average pool, goes on the grid as well. The bundles are integer-only, and
PyTorch == reference == C bit for bit, with no multiply in the shift kernels and 0 float MACs.
Hardswish, SiLU and sigmoid become tables, and the squeeze-excite gates shifts
(``test_integer_tables.py``): no multiply in the gate kernels either. (MobileNetV3 and
EfficientNet-B0 integer-only and exact in the reference: ``test_mobile.py``.)
"""
import shutil

import numpy as np
import pytest
import timm
import torch
import torchvision

import shiftquant as sq
from shiftquant.cli import bundle_summary
from tests.export.models import deploy_exported
from tests.export.test_codegen import (
    MULTIPLY,
    assert_no_multiply_in_shift_kernels,
    compile_object,
    kernels_of,
)

PIXELS = sq.PixelInput((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255)
MODELS = {
    "timm mobilenetv2_050": lambda: timm.create_model("mobilenetv2_050", num_classes=10),
    "timm efficientnet_lite0": lambda: timm.create_model("efficientnet_lite0", num_classes=10),
    "torchvision mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5),
}
SQUEEZE_EXCITE = {"timm mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050", num_classes=10)}


def _exported(name: str, tmp_path):
    torch.manual_seed(1)
    model = {**MODELS, **SQUEEZE_EXCITE}[name]().eval()
    return deploy_exported(model, (8, 3, 32, 32), PIXELS, tmp_path / "m.sqb")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inverted_residual_networks_run_integer_only_and_exact(name, tmp_path):
    rt, pixels, ref = _exported(name, tmp_path)
    assert rt.manifest["integer_only"], rt.float_ops
    assert rt.manifest["agreement"]["max_abs_diff"] == 0.0
    assert np.array_equal(rt.run(pixels), ref)
    macs = bundle_summary(str(rt.source))["macs"]
    assert macs["float"] == 0 and macs["shift_add"] == macs["total"] > 0


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("objdump") is None, reason="no C compiler or objdump")
@pytest.mark.parametrize("name, gates, weights", [("timm mobilenetv2_050", 0, None),
                                                  ("timm mobilenetv3_small_050", 9, "packed")])
def test_the_c_backend_runs_them_bit_for_bit_without_multiplies(name, gates, weights, tmp_path, monkeypatch):
    """MobileNetV2, and MobileNetV3 with its tables and squeeze-excite gate shifts: no multiply in
    the shift kernels, nor in the gate kernels. The host's own weights form for one (tables or
    offset lists, whichever its budget takes), packed codes for the other (lists of both would
    take a minute more to compile)."""
    from shiftquant.export.c import CRuntime

    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    rt, pixels, ref = _exported(name, tmp_path)
    native = CRuntime(rt, weights=weights)
    assert native.program.weights in ((weights,) if weights else ("tables", "lists"))
    assert np.array_equal(native.run(pixels), ref)
    sq.codegen(rt, tmp_path, "net")
    assert_no_multiply_in_shift_kernels(rt, tmp_path, ["-O2"])
    assert sum(1 for n in rt.nodes if n.get("gate") is not None) == gates
    functions = kernels_of(compile_object(tmp_path, "net", ["-O2"]))
    gate_kernels = {f: ops for f, ops in functions.items() if "_gate_" in f}
    assert bool(gate_kernels) == bool(gates)  # one function per gate shape: gcc folds identical ones (-fipa-icf)
    assert not any(MULTIPLY.match(op) for ops in gate_kernels.values() for op in ops)
