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


class _Attention(nn.Module):
    """Quantized projections and float products between activations (matmul and SDPA)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        a = (self.q(x) @ self.k(x).transpose(-1, -2)).softmax(-1)
        y = torch.nn.functional.scaled_dot_product_attention(x, x, x)
        return self.head((a @ x + y).mean(1))


def test_summary_splits_macs_into_shift_add_integer_and_float():
    model, x = _Attention(), torch.randn(2, 5, 8)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [x])
    d = sq.summary(model, x).to_dict()
    # q, k: 5 tokens x 8 outputs x 8 inputs; head: 4 x 8. Matmuls: q k^T 5x5x8, a x 5x8x5, SDPA 5x5x(8+8).
    assert d["shift_add_macs"] == 2 * 5 * 8 * 8 + 4 * 8
    assert d["float_macs"] == 5 * 5 * 8 + 5 * 8 * 5 + 5 * 5 * 16
    assert d["integer_macs"] == 0
    assert d["total_macs"] == d["shift_add_macs"] + d["float_macs"]
    assert "float 800 (54.3%)" in str(sq.summary(model, x))
    # Uniform weights with quantized inputs: integer multiplies.
    uniform = nn.Sequential(nn.Linear(8, 4))
    sq.quantize_model(uniform, sq.QuantRecipe.preset("deploy", deploy_exact=False, weight_shift_bits=None, weight_uniform_bits=4,
                                                     act_shift_bits=2))
    sq.calibrate(uniform, [x[:, 0]])
    assert sq.summary(uniform, x[:, 0]).to_dict()["integer_macs"] == 32


def test_summary_and_final_table_columns_hold_their_longest_entry():
    from shiftquant.nn.residual import QuantBatchNorm2d  # noqa: F401 - the type whose name was cut
    from shiftquant.train.run import report

    model = torchvision.models.resnet18(num_classes=10)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", act_shift_bits=2))
    text = str(sq.summary(model, torch.randn(1, 3, 32, 32)))
    kinds = {r.kind for r in sq.summary(model, torch.randn(1, 3, 32, 32)).rows}
    assert any(len(k) > 12 for k in kinds) and all(k in text for k in kinds)
    lines = text.splitlines()
    start = lambda line: len(line) - len(line.split()[-1])  # where the last column starts: one place for all
    rows = [line for line in lines[2:] if not line.startswith(("-", "total", "MACs"))]
    assert rows and all(start(line) == start(lines[0]) for line in rows)
    table = report({"recipe": {}, "ptq": True, "fp_test_acc": 0.9, "hard_test_acc": 0.85, "eps_final": 0.0})
    rows = table.splitlines()[:4]
    assert rows[2].startswith("float") and rows[3].startswith("hard (eps = 0, PTQ")
    assert len({len(r) for r in (rows[0], rows[2], rows[3])}) == 1 and rows[3].endswith("85.00%")
