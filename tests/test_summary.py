import torch
import torchvision
from torch import nn

import shiftquant as sq


def test_summary_of_dbssq_resnet18():
    model = torchvision.models.resnet18(weights=None)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", weight_shift_bits=2, act_shift_bits=2))
    s = sq.summary(model, torch.randn(1, 3, 64, 64))
    d = s.to_dict()
    rows = {r["name"]: r for r in d["layers"]}
    quantized = [r for r in d["layers"] if r["shift_add"]]
    assert len(quantized) == 16 and all(r["weight_bits"] == 3 and r["act_bits"] == 3 for r in quantized)
    assert rows["conv1"]["weight_bits"] == 32 and rows["fc"]["act_bits"] is None
    # layer1.0.conv1 at 64 px: 16x16 output, 64 channels, 64*9 MACs each.
    assert rows["layer1.0.conv1"]["macs"] == 16 * 16 * 64 * 64 * 9
    # 3-bit codes plus one float32 scale per output channel.
    assert rows["layer1.0.conv1"]["bytes"] == 36864 * 3 / 8 + 64 * 4
    assert d["total_params"] == sum(p.numel() for p in model.parameters())
    assert 6 < d["compression"] < 32 / 3
    text = str(s)
    assert "layer4.1.conv2" in text and "compression" in text and "shift-adds" in text


def test_summary_of_float_model_is_uncompressed():
    model = nn.Sequential(nn.Linear(10, 5))
    d = sq.summary(model).to_dict()
    assert d["compression"] == 1.0 and d["layers"][0]["macs"] is None
