"""Integer clamp on a grid (ReLU6, Hardtanh): the op added after the op registry, one definition."""
import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError
from shiftquant.export.reference.runtime import Runtime
from tests.export.models import pixel_batches

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


class ClampedResidual(nn.Module):
    """A residual block whose stream is clamped after the add: ReLU6 (``F.relu6``) in one block,
    a Hardtanh(-1, 2) module in the next, then a pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.clip = nn.Hardtanh(-1.0, 2.0)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu6(x + self.bn1(self.conv1(x)))
        x = self.clip(x + self.bn2(self.conv2(x)))
        return self.head(torch.flatten(F.avg_pool2d(x, 2), 1))


@pytest.fixture(scope="module")
def clamped(tmp_path_factory):
    torch.manual_seed(0)
    model = ClampedResidual().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 3.0)
                m.bias.uniform_(-0.5, 1.5)
    batches = pixel_batches((6, 1, 8, 8), 0, PIXELS)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [PIXELS.to_float(batches["calibration"])])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path_factory.mktemp("clamp") / "m.sqb", PIXELS.to_float(batches["calibration"][:1]),
                   PIXELS)
    return model, batches, rt


def test_relu6_and_hardtanh_on_the_residual_grid_clip_integers_exactly(clamped):
    model, batches, rt = clamped
    clamps = [n for n in rt.nodes if n["op"] == "clamp"]
    assert len(clamps) == 2 and all(n.get("int_bounds") is not None and n["dtype"] != "float32" for n in clamps)
    assert rt.manifest["integer_only"], rt.float_ops
    p = np.concatenate(list(batches.values()))
    with torch.no_grad():
        ref = model(PIXELS.to_float(p)).numpy()
    assert np.array_equal(rt.run(p), ref)
    clipped = [rt.facts[n["name"]] for n in clamps]
    assert [f.hi * f.unit for f in clipped] == [6.0, 2.0] and clipped[1].lo * clipped[1].unit == -1.0


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_backend_clips_the_same_integers(clamped, monkeypatch, tmp_path):
    model, batches, rt = clamped
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    p = np.concatenate(list(batches.values()))
    native = sq.load_bundle(rt.source, backend="c")
    assert np.array_equal(native.run_int(p)[0], rt.run_int(p)[0])


def test_integer_bounds_off_the_float_bounds_are_refused_at_load(clamped):
    """A hostile bundle cannot make the integer clamp differ from the float clamp it stands for."""
    _, _, rt = clamped
    index = next(i for i, n in enumerate(rt.nodes) if n["op"] == "clamp")
    lo, hi = rt.nodes[index]["int_bounds"]
    for corrupt in ([lo, hi + 1], [lo + 1, hi], [None, hi], [lo, None], [hi, lo], [str(lo), hi], [lo, 1 << 40], [lo]):
        manifest = copy.deepcopy(rt.manifest)
        node = manifest["nodes"][index]
        node["int_bounds"] = corrupt
        with pytest.raises(BundleError, match=node["name"]):
            Runtime(manifest, rt.tensors)


def test_a_bound_off_a_fine_grid_that_clips_nothing_is_dropped(tmp_path):
    """ReLU6 on a grid so fine that 6 is beyond 2^24 units (and far above the grid's top): the
    bound clips nothing the stream can hold, so the integer clamp keeps only its lower bound (and
    the Hardtanh(-1, 2) after it neither)."""
    torch.manual_seed(0)
    model = ClampedResidual().eval()
    batches = pixel_batches((6, 1, 8, 8), 0, PIXELS)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [PIXELS.to_float(batches["calibration"])])
    with torch.no_grad():
        for m in (model.stem[1], model.bn1, model.bn2):
            m.output_quantizer.log2_scale.fill_(-26.0)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", torch.zeros(1, 1, 8, 8), PIXELS)
    clamps = {n["max"]: n["int_bounds"] for n in rt.nodes if n["op"] == "clamp"}
    assert clamps == {6.0: [0, None], 2.0: [None, None]} and rt.manifest["integer_only"], rt.float_ops
    p = np.concatenate(list(batches.values()))
    with torch.no_grad():
        assert np.array_equal(rt.run(p), model(PIXELS.to_float(p)).numpy())
