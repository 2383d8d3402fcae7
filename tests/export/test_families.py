"""What exports today, family by family: the table in README.md ("Which models export"), watched.

Each model is converted with the deploy preset at W3A3 and checked with ``sq.check_exportable`` on
32 px inputs taken as pixels. BatchNorm gains are set to 1 first, as in a trained model (timm
zero-initializes the last BatchNorm of each block, which leaves a residual branch at exactly 0).
"""
import pytest
import timm
import torch
import torchvision

import shiftquant as sq
from shiftquant.models.factory import build_model
from tests.export.models import FunctionalCNN, PaddedCNN

PIXELS = sq.PixelInput((0.5,), (0.25,))
PIXELS3 = sq.PixelInput((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FAMILIES = {
    # name: (constructor, channels, expected verdict, module types refused)
    "resnet20": (lambda: build_model("resnet20", 10, 1), 1, "integer-only, exact", set()),
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 3, "integer-only, exact", set()),
    "timm resnet18": (lambda: timm.create_model("resnet18", num_classes=10), 3, "integer-only, exact", set()),
    "timm resnet10t": (lambda: timm.create_model("resnet10t", num_classes=10), 3, "integer-only, exact", set()),
    "timm mobilenetv3_small_050": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=10), 3,
                                   "integer-only, exact", set()),
    "timm mobilenetv2_050": (lambda: timm.create_model("mobilenetv2_050", num_classes=10), 3,
                             "integer-only, exact", set()),
    "timm efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10), 3,
                             "integer-only, exact", set()),
    "timm vit_tiny_patch16_224": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32,
                                                            patch_size=4, depth=1), 3, "integer-only, exact",
                                  set()),
    "timm deit_tiny_patch16_224": (lambda: timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32,
                                                             patch_size=4, depth=1), 3, "integer-only, exact",
                                   set()),
    "padded cnn": (PaddedCNN, 3, "exact, with 2 float op(s)", set()),
    "torchvision mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 3,
                                       "integer-only, exact", set()),
    "functional cnn": (FunctionalCNN, 3, "exact, with 20 float op(s)", set()),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_exports_as_the_readme_says(name):
    make, channels, verdict, refused_types = FAMILIES[name]
    torch.manual_seed(0)
    model = make().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x = torch.randn(2, channels, 32, 32)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [x])
    report = sq.check_exportable(model, x, PIXELS if channels == 1 else PIXELS3)
    assert report.how == verdict, str(report)[:2000]
    kinds = {r.module_type.rsplit(".", 1)[-1] for r in report.refusals}
    assert refused_types <= kinds, kinds


def test_fresh_timm_resnet_with_zero_initialized_batchnorm_gains_exports_integer_only():
    """timm zero-initializes each block's last BatchNorm gain: that branch is exactly 0 at
    calibration, and its residual grid must not take the tiniest scale (which misaligned the add)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    assert all(float(b.bn2.weight.abs().max()) == 0 for b in model.layer1)
    x = torch.randn(2, 3, 32, 32)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [x])
    assert sq.check_exportable(model, x, PIXELS3).how == "integer-only, exact"
