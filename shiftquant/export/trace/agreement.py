"""Does the bundle compute what the PyTorch hard model computes? Measured at every export.

The exporter runs the bundle it built (the reference runtime) and the hard (eps = 0) model on the
same inputs: the example input and a few seeded legitimate inputs (random pixels for a pixel
bundle, standard normal values otherwise). It measures

- ``max_abs_diff``: the largest absolute difference between the two outputs;
- ``top1``: the share of inputs whose top class agrees, an input agreeing when the bundle's top
  class is within the tolerance of PyTorch's top logit (a tie inside the tolerance is no
  disagreement).

The **tolerance** is 0 for an exact bundle (``deploy_exact``: the runtime's logits must equal
PyTorch's bit for bit), and ``TOLERANCE`` times the largest logit magnitude (at least 1)
otherwise: float ops run PyTorch's own kernels, and only the float dequantization of a layer
without exact parity rounds differently. Beyond the tolerance, or below 100 % agreement, the
export fails naming the first node whose value leaves the tolerance, unless the user accepts an
approximate bundle; the measurement goes into the manifest either way (``agreement``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ...errors import ExportError
from .. import ops
from ..format.pixels import PixelInput, pixels_to_float
from ..format.values import THROUGH_THRESHOLDS
from ..reference.runtime import Runtime
from .tracer import node_values

TOLERANCE = 1e-4  # relative to the largest |logit| (at least 1), for a bundle without exact parity
EXTRA_INPUTS = 3  # seeded random inputs checked beside the example input


@dataclass(frozen=True)
class Agreement:
    images: int
    top1: float          # share of inputs whose top class agrees
    max_abs_diff: float  # largest |bundle - PyTorch| over every output
    tolerance: float
    divergence: str | None = None  # the first node beyond the tolerance (measured when it fails)

    @property
    def ok(self) -> bool:
        return self.top1 == 1.0 and self.max_abs_diff <= self.tolerance

    def record(self) -> dict:
        """What the manifest holds (``agreement``)."""
        return {"images": self.images, "top1": self.top1, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance}

    def failure(self, exact: bool) -> str:
        where = (f"the first node beyond the tolerance is {self.divergence}" if self.divergence else
                 "no single node leaves the tolerance before the outputs")
        hint = "" if exact else "the deploy preset (deploy_exact) makes a bundle exact; "
        return (f"the bundle disagrees with the PyTorch hard model on {self.images} check inputs: top-1 agreement "
                f"{100 * self.top1:.1f} %, largest logit difference {self.max_abs_diff:.3g} (tolerance "
                f"{self.tolerance:.3g}); {where}; {hint}pass allow_approximate=True (--allow-approximate) "
                "to write it anyway")


def check_inputs(example_input: torch.Tensor, pixels: PixelInput | None, extra: int = EXTRA_INPUTS) -> torch.Tensor:
    """The example input and ``extra`` seeded legitimate inputs of its shape, as the float model's
    input (random pixels normalized for a pixel bundle)."""
    g = torch.Generator().manual_seed(0)
    shape = (extra, *example_input.shape[1:])
    if pixels is None:
        more = torch.randn(shape, generator=g)
    else:
        more = pixels.to_float(torch.randint(0, pixels.scale + 1, shape, generator=g).numpy())
    return torch.cat([example_input.detach().float().cpu(), more.to(torch.float32)])


def measure(model: nn.Module, manifest: dict, tensors: dict[str, np.ndarray], x: torch.Tensor) -> Agreement:
    """Run the bundle ``(manifest, tensors)`` and the hard ``model`` on the float inputs ``x``."""
    rt = Runtime(manifest, tensors, "export", strict=False)
    bundle_in = rt.input_from_float(x.numpy())
    x_ref = pixels_to_float(bundle_in, rt.pixels) if rt.pixels else torch.from_numpy(bundle_in)
    got = _outputs(rt.run(bundle_in))
    with torch.no_grad():
        ref = _outputs(model(x_ref))
    if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
        raise ExportError(f"the bundle's outputs {[list(a.shape) for a in got]} are not the PyTorch model's "
                          f"{[list(b.shape) for b in ref]}")
    top = max([1.0] + [float(np.abs(b).max()) for b in ref if b.size])
    tol = 0.0 if manifest.get("exact") else TOLERANCE * top
    diff = max(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0 for a, b in zip(got, ref))
    first, second = got[0], ref[0]
    agree = np.ones(len(x), dtype=bool)
    if first.ndim == 2 and first.shape[1] > 1:
        picked = second[np.arange(len(x)), first.argmax(1)]
        agree = picked >= second.max(1) - tol
    found = Agreement(len(x), float(agree.mean()), diff, tol)
    if found.ok:
        return found
    return replace(found, divergence=_first_divergence(rt, model, bundle_in, x_ref, bool(manifest.get("exact"))))


def _outputs(out) -> list[np.ndarray]:
    items = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o.detach().numpy() if isinstance(o, torch.Tensor) else o, dtype=np.float64) for o in items]


def _first_divergence(rt: Runtime, model: nn.Module, bundle_in: np.ndarray, x_ref: torch.Tensor,
                      exact: bool) -> str | None:
    """The first node (in the bundle's order) whose value differs from the same node's value in the
    PyTorch model: at all (``exact``), or by more than ``TOLERANCE`` times the larger of 1 and that
    value's magnitude.
    Nodes without a PyTorch counterpart of the same shape are skipped: a layer handing its codes to
    the next one (its value is the next grid's integers) and the pools and flattens that move those
    integers, pooled sums, the pixels."""
    values, torch_values = rt.values(bundle_in), node_values(model, x_ref)
    codes: set[str] = set()  # layers handing codes on, and the moves (pools, flattens) of those codes
    for node in rt.nodes:
        if node.get("requant") or ops.get(node["op"]).chain == "move" and node["inputs"][0] in codes:
            codes.add(node["name"])
            continue
        v, t = values.get(node["name"]), torch_values.get(node["name"])
        if v is None or not isinstance(t, torch.Tensor) or v.kind in THROUGH_THRESHOLDS + ("pixels",):
            continue
        a, b = rt.to_float(v).numpy().astype(np.float64), t.detach().numpy().astype(np.float64)
        if a.shape != b.shape or not a.size:
            continue
        if np.abs(a - b).max() > (0.0 if exact else TOLERANCE * max(1.0, float(np.abs(b).max()))):
            return f"{node['name']!r} ({node['op']}, module {node.get('module')!r})"
    return None
