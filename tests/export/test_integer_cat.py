"""``torch.cat`` on integers: a SqueezeNet fire module's expand branches, and residual grids joined.

Where every input of a cat is a shift layer's chain into the same next layer, each branch folds
that layer's input quantizer into its thresholds and the cat joins their codes (the chains fold
together or not at all). Where the inputs are on power-of-two grids already (the residual
stream), the cat shifts each onto the finest grid. Integer-only, PyTorch == reference == C.
"""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError
from shiftquant.export.format.bundle import read_bundle, write_bundle
from tests.export.models import deploy_exported

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


class Twin(nn.Module):
    """Two residual branches of one input, joined: ``cat([x + BN(conv(x)), x + BN(conv'(x))])``."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.b = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.cat([x + self.a(x), x + self.b(x)], 1)


def fire_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Fire(8, 4, 8), Fire(16, 4, 8),
                         nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def twin_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Twin(8),
                         nn.Conv2d(16, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10)).eval()


def _exported(make, tmp_path):
    return deploy_exported(make(), (6, 1, 12, 12), PIXELS, tmp_path / "m.sqb")


@pytest.mark.parametrize("make, cats", [(fire_net, 2), (twin_net, 1)])
def test_cats_of_integers_run_integer_only_and_exact(make, cats, tmp_path):
    rt, pixels, ref = _exported(make, tmp_path)
    assert rt.manifest["integer_only"], rt.float_ops
    joined = [n for n in rt.nodes if n["op"] == "cat"]
    assert len(joined) == cats and all(n["shifts"] is not None and n["dtype"] != "float32" for n in joined)
    if make is fire_net:  # each branch's ReLU folded into its layer's thresholds, to the next layer's codes
        assert all(n.get("requant") for n in rt.nodes if n["name"] in {i for c in joined for i in c["inputs"]})
    assert np.array_equal(rt.run(pixels), ref)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("make", [fire_net, twin_net])
def test_the_c_backend_joins_the_same_integers(make, tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    rt, pixels, ref = _exported(make, tmp_path)
    assert np.array_equal(sq.load_bundle(rt.source, backend="c").run(pixels), ref)


def test_a_fire_module_with_one_float_branch_keeps_its_cat_float(tmp_path):
    """One branch that cannot fold (a GELU called as a function) keeps the other branch and the
    cat in float too: a cat never joins codes and float values."""
    class HalfFire(Fire):
        def forward(self, x):
            x = self.squeeze(x)
            return torch.cat([self.e1(x), nn.functional.gelu(self.e3[0](x))], 1)

    def half_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), HalfFire(8, 4, 8), nn.Conv2d(16, 10, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()

    rt, pixels, ref = _exported(half_net, tmp_path)
    cat = next(n for n in rt.nodes if n["op"] == "cat")
    assert cat["name"] in rt.float_ops and cat.get("shifts") is None
    assert np.array_equal(rt.run(pixels), ref)


@pytest.mark.parametrize("shifts, message", [([0], "one integer 0 to 30 per input"), ([0, 31], "one integer 0 to 30"),
                                             ([1, 0], "shifts do not align")])
def test_hostile_cat_shifts_are_refused_at_load(shifts, message, tmp_path):
    rt, _, _ = _exported(fire_net, tmp_path)
    manifest, tensors = read_bundle(rt.source)
    next(n for n in manifest["nodes"] if n["op"] == "cat")["shifts"] = shifts
    write_bundle(tmp_path / "edited.sqb", manifest, tensors)
    with pytest.raises(BundleError, match=message):
        sq.load_bundle(tmp_path / "edited.sqb")
