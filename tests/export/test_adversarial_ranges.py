"""Sound range proofs: no legitimate input exceeds a proven bound, including inputs built to.

For every shift layer, pixels are found by gradient ascent (straight-through gradients of the
hard model) on the layer's largest |accumulator|, then rounded to the bundle's integer pixels.
The reference runtime checks every accumulator against its proven bound and every integer
against its declared range, so running it on those pixels tests every proof on the path; its
logits must still be PyTorch's bit for bit. That the ascent has teeth is measured: on the first
layer, where the worst case is reachable, it gets close to the bound, far beyond random pixels.
Models: the parity models, the pooling LeNet / VGG, pads, clamps and biases of both signs, a
network of squeeze-excite blocks (activation tables, gate shifts), one of fire modules (cat) and a
ViT (integer LayerNorm, shiftmax, attention matmuls, token embeddings on the grid).
"""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from shiftquant.export.ops.shift import _input_interval
from shiftquant.export.ops.shift_kernels import accumulator_range
from shiftquant.models import lenet5_avg, vgg_small
from shiftquant.nn.layers import QuantMixin
from tests.export.models import pixel_batches, quantized_pixels
from tests.export.test_integer_cat import fire_net
from tests.export.test_integer_tables import se_net

STEPS = 30


class Constants(nn.Module):
    """conv-BN-ReLU, a pad with ``value``, a conv with a bias of sign ``sign``, a clamp to bounds of
    both signs, a conv, a Linear head."""

    def __init__(self, value: float, sign: float):
        super().__init__()
        self.value = value
        self.a, self.bn = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 6, 3)
        self.c = nn.Conv2d(6, 4, 3, stride=2)
        self.head = nn.Linear(4 * 4 * 4, 10)
        with torch.no_grad():
            self.b.bias.copy_(sign * torch.rand(6).add(0.5))

    def forward(self, x):
        x = F.pad(torch.relu(self.bn(self.a(x))), (1, 1, 1, 1), value=self.value)
        x = torch.clamp(self.b(x), min=-0.75 if self.value < 0 else 0.25, max=1.5)
        return self.head(torch.flatten(torch.relu(self.c(x)), 1))


def _quantized(model: nn.Module, shape) -> tuple[nn.Module, dict, sq.PixelInput]:
    px = sq.PixelInput((0.3,), (0.4,), 255)
    batches = pixel_batches(shape, 0, px)
    torch.manual_seed(0)
    sq.quantize_model(model.eval(), sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    sq.calibrate(model, [px.to_float(batches["calibration"])])
    return model, batches, px


MODELS = {
    "mlp": lambda: quantized_pixels("mlp", 0, weight_shift_bits=3, act_shift_bits=3),
    "plain": lambda: quantized_pixels("plain", 0, weight_shift_bits=2, act_shift_bits=2),
    "cnn": lambda: quantized_pixels("cnn", 0, weight_shift_bits=3, act_shift_bits=3),
    "resnet20": lambda: quantized_pixels("resnet20", 0, weight_shift_bits=2, act_shift_bits=2),
    "lenet-avg": lambda: _quantized(lenet5_avg(), (4, 1, 28, 28)),
    "vgg": lambda: _quantized(vgg_small(), (4, 1, 16, 16)),
    "pad+1-bias+": lambda: _quantized(Constants(1.0, 1.0), (4, 1, 12, 12)),
    "pad-1-bias-": lambda: _quantized(Constants(-1.0, -1.0), (4, 1, 12, 12)),
    "squeeze-excite": lambda: _quantized(se_net(), (4, 1, 12, 12)),
    "fire": lambda: _quantized(fire_net(), (4, 1, 12, 12)),
    "vit": lambda: _quantized(timm.create_model("vit_tiny_patch16_224", img_size=12, patch_size=4, in_chans=1,
                                                num_classes=10, depth=2, embed_dim=32, num_heads=2), (4, 1, 12, 12)),
}


class _Accumulators:
    """The integer accumulator of a quantized layer, from its output: (output - bias) / grid."""

    def __init__(self, layer: QuantMixin):
        self.layer, self.value = layer, None
        self.hook = layer.register_forward_hook(self._capture)

    def _capture(self, layer, inputs, output):
        scale = layer.input_quantizer.quantize(inputs[0])[1]
        grid = layer.accumulator_grid(scale)
        bias = layer.quantized_bias(scale)
        linear = isinstance(layer, torch.nn.Linear)  # channels last (a ViT's tokens are (B, N, C))
        shape = (1,) * (output.dim() - 1) + (-1,) if linear else (1, -1) + (1,) * (output.dim() - 2)
        out = output if bias is None else output - bias.reshape(shape)
        self.value = out / grid.reshape(shape)


def _ascend(model: nn.Module, layer: QuantMixin, px: sq.PixelInput, start: np.ndarray) -> np.ndarray:
    """Pixels that make ``layer``'s largest |accumulator| large: signed gradient ascent on the float
    input within the pixels' range, with a shrinking step, rounded to pixels at the end."""
    lo, hi = px.to_float(np.zeros((1, *start.shape[1:]), np.uint8)), px.to_float(np.full((1, *start.shape[1:]), 255, np.uint8))
    x = px.to_float(start).clone().requires_grad_(True)
    acc = _Accumulators(layer)
    try:
        for step in range(STEPS):
            model(x)
            objective = acc.value.abs().flatten(1).amax(1).sum()  # each start: its largest
            grad, = torch.autograd.grad(objective, x)
            with torch.no_grad():
                x += (hi - lo) * (0.25 * (1 - step / STEPS)) * grad.sign()
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    finally:
        acc.hook.remove()
    return px.from_float(x.detach())


def _reached(model: nn.Module, layer: QuantMixin, px: sq.PixelInput, pixels: np.ndarray) -> float:
    acc = _Accumulators(layer)
    try:
        with torch.no_grad():
            model(px.to_float(pixels))
    finally:
        acc.hook.remove()
    return float(acc.value.abs().max())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inputs_built_to_exceed_the_proven_bounds_do_not(name, tmp_path):
    model, batches, px = MODELS[name]()
    sq.set_slope(model, 0.0)
    shape = batches["calibration"].shape
    rt = sq.export(model, tmp_path / "m.sqb", torch.zeros(1, *shape[1:]), px)
    layers = {n["module"]: n for n in rt.nodes if n["op"].startswith("shift_")}
    found, first = [], None
    for module, node in layers.items():
        layer = model.get_submodule(module)
        pixels = _ascend(model, layer, px, batches["held_out"])
        found.append(pixels)
        bound = node["accumulator_bound"]
        attacked, random = _reached(model, layer, px, pixels), _reached(model, layer, px, batches["held_out"])
        assert attacked <= bound, (module, attacked, bound)
        if first is None:  # the tight worst case of the first layer: every code at its end
            lo, hi = _input_interval(rt, node, rt.facts[node["inputs"][0]])
            worst = max(max(map(abs, r)) for r in accumulator_range(rt.weights[node["name"]], lo, hi))
            first = (attacked / worst, random / worst)
    attacked = np.concatenate(found)
    values = rt.run(attacked)  # every accumulator and every integer checked against its proof
    with torch.no_grad():
        assert np.array_equal(values, model(px.to_float(attacked)).numpy())
    # The ascent has teeth: on the first layer (linear in the pixels' codes) it nearly reaches
    # the worst case that the pixels' codes allow, which random pixels do not come near.
    assert first[0] >= 0.9 and first[0] >= 1.2 * first[1], first
