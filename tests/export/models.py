"""Small models for the export tests, with non-trivial BatchNorm statistics, and pixel inputs."""
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from shiftquant.models import resnet20


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 32),
                                 nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class PlainCNN(nn.Module):
    """No residual and no pooling: with every layer quantized it runs integer-only."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False), nn.BatchNorm2d(8),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """BatchNorm, ReLU, a residual add, depthwise and grouped convs, average pooling, a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=True)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu(self.bn1(self.depthwise(x)))
        y = self.bn2(self.grouped(y))
        x = self.relu(x + y)
        return self.head(torch.flatten(self.pool(x), 1))


def build(name: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A model and an input batch; BatchNorm statistics and affine parameters drawn from ``seed``."""
    torch.manual_seed(seed)
    if name == "mlp":
        model, x = MLP(), torch.randn(4, 1, 8, 8)
    elif name == "cnn":
        model, x = SmallCNN(), torch.randn(4, 1, 8, 8)
    elif name == "plain":
        model, x = PlainCNN(), torch.randn(4, 1, 8, 8)
    elif name == "resnet20":
        model, x = resnet20(num_classes=10, in_chans=1), torch.randn(2, 1, 16, 16)
    else:
        model, x = torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                # Some negative gains: requantization must handle decreasing channels.
                m.weight.uniform_(0.5, 1.5).mul_(torch.where(torch.rand_like(m.weight) < 0.2, -1.0, 1.0))
                m.bias.uniform_(-0.3, 0.3)
    return model.eval(), x


def quantized(name: str, seed: int, preset: str = "deploy", **recipe):
    """``build`` converted with a recipe and calibrated on its own input: ``(model, x)``."""
    import shiftquant as sq

    model, x = build(name, seed)
    sq.quantize_model(model, sq.QuantRecipe.preset(preset, **recipe))
    sq.calibrate(model, [x])
    return model, x


# How each test model's input comes from integer pixels (a 1-channel 0..255 camera, ImageNet's RGB).
PIXELS = {1: dict(mean=(0.3,), std=(0.4,), scale=255),
          3: dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255)}


def pixel_spec(x: torch.Tensor):
    import shiftquant as sq

    return sq.PixelInput(**PIXELS[x.shape[1]])


def pixel_batches(shape, seed: int, px) -> dict[str, np.ndarray]:
    """Pixel batches of ``shape`` (N, C, H, W): random (calibration), random held out, and the
    saturation extremes: all 0, all ``scale``, and salt and pepper."""
    rng = np.random.default_rng(seed)
    top = px.scale
    return {"calibration": rng.integers(0, top + 1, shape).astype(np.uint8),
            "held_out": rng.integers(0, top + 1, shape).astype(np.uint8),
            "zeros": np.zeros((1, *shape[1:]), dtype=np.uint8),
            "saturated": np.full((1, *shape[1:]), top, dtype=np.uint8),
            "salt_pepper": (rng.integers(0, 2, (1, *shape[1:])) * top).astype(np.uint8)}


def quantized_pixels(name: str, seed: int, preset: str = "deploy", **recipe):
    """``quantized`` fed pixels: ``(model, pixel batches, PixelInput)``, calibrated on the first batch."""
    import shiftquant as sq

    model, x = build(name, seed)
    px = pixel_spec(x)
    batches = pixel_batches(tuple(x.shape), seed, px)
    sq.quantize_model(model, sq.QuantRecipe.preset(preset, **recipe))
    sq.calibrate(model, [px.to_float(batches["calibration"])])
    return model, batches, px


def deploy_exported(model: nn.Module, shape, px, path, allow_approximate: bool = False, **recipe):
    """``model`` at deploy W3A3 (``recipe`` overrides), calibrated on pixel batches of ``shape``,
    hard, exported to ``path`` with pixel input: ``(bundle runtime, pixels, PyTorch's logits on
    them)``, the pixels being every batch of :func:`pixel_batches`."""
    import shiftquant as sq

    batches = pixel_batches(shape, 0, px)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", **{"weight_shift_bits": 3, "act_shift_bits": 3, **recipe}))
    sq.calibrate(model, [px.to_float(batches["calibration"])])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, path, torch.zeros(1, *shape[1:]), px, allow_approximate=allow_approximate)
    pixels = np.concatenate(list(batches.values()))
    with torch.no_grad():
        ref = model(px.to_float(pixels)).numpy()
    return rt, pixels, ref


class FunctionalCNN(nn.Module):
    """A model written in functional style: F.relu6 / F.hardswish / torch.clamp, functional pools,
    a squeeze-excite gate, a channel concat, x.mean and dropout in eval."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = F.max_pool2d(x, 2)
        a = torch.clamp(self.bn_a(self.a(x)), 0.0, 4.0)
        b = F.hardswish(self.bn_b(self.b(x)))
        x = torch.cat([a, b], dim=1)
        x = F.avg_pool2d(x, 2, stride=1)
        gate = F.hardsigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = x * gate
        x = F.dropout(x.mean((2, 3)), 0.2, training=self.training)
        return self.head(x)


class PaddedCNN(nn.Module):
    """Padding other than symmetric zeros and pooling with padding: reflect and replicate padding
    modes, timm's ``Conv2dSame`` (asymmetric zeros from the input size), a functional ``F.pad``,
    a 3x3 average pool with padding counted and a ceil-mode pool on whole windows (both over the
    residual stream, read by the next layer), and ``x.view(x.size(0), -1)``."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        conv = lambda *a, **k: nn.Conv2d(*a, bias=False, **k)
        self.stem, self.bn1 = conv(3, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8)
        self.same, self.bn2 = Conv2dSame(8, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.replicate, self.bn3 = conv(8, 8, 3, padding=1, padding_mode="replicate"), nn.BatchNorm2d(8)
        self.conv4, self.bn4 = conv(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv5, self.bn5 = conv(8, 8, 3), nn.BatchNorm2d(8)
        self.conv6, self.bn6 = conv(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(self.bn2(self.same(x)))                           # 32 -> 16, padded (0, 1) by Conv2dSame
        x = F.relu(x + self.bn3(self.replicate(x)))
        x = F.avg_pool2d(x, 3, 1, 1)                                 # padding counted: every window / 9
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.relu(x + self.bn5(self.conv5(F.pad(x, (1, 1, 1, 1)))))  # zeros padded before a quantized conv
        x = F.avg_pool2d(x, 2, 2, ceil_mode=True)                    # 16 -> 8: whole windows
        x = F.max_pool2d(F.relu(self.bn6(self.conv6(x))), 2)         # 8 -> 4
        return self.head(x.view(x.size(0), -1))
