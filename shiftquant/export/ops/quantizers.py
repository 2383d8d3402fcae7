"""Quantizers in a manifest: their checks, their integers, and the input quantizer's float kernel.

A quantizer entry (``kind``, ``bits``, ``rounding``, ``zero``, ``signed``, ``full_codes``,
``levels``, ``resolution``, ``code_bits``) describes a weight grid or, inside an activation
quantizer (``quantizer``, ``policy``, ``log2_scale`` or the standardization's statistics,
``channel_dim``), an input grid. Its levels divided by ``resolution`` are integers; an activation
quantizer's integers are worth :func:`input_unit` each.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...quant import functional as QF

MAX_CODE_BITS = 16  # bits of a packed code (docs/bundle.md)
MAX_SHIFT_BITS, MAX_UNIFORM_BITS = 8, 16  # an activation quantizer's bits


def check_quantizer(rt, node: dict, q: dict) -> None:
    if not isinstance(q, dict) or q.get("kind") not in ("shift", "uniform") \
            or q.get("rounding") not in QF.ROUNDINGS or not isinstance(q.get("zero"), bool) \
            or not isinstance(q.get("signed"), bool) or not isinstance(q.get("full_codes", False), bool):
        rt.fail(node, "malformed quantizer")
    if q.get("full_codes") and (q["signed"] or not q["zero"]):
        rt.fail(node, "full_codes is a layout of unsigned quantizers with a zero level")
    rt.ints(node, q.get("bits"), "quantizer bits")
    if rt.ints(node, q.get("code_bits"), "code_bits", low=1)[0] > MAX_CODE_BITS:
        rt.fail(node, f"code_bits must be 1 to {MAX_CODE_BITS}")
    levels = q.get("levels")
    if not isinstance(levels, list) or not levels or len(levels) > 1 << q["code_bits"] \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in levels) \
            or levels != sorted(levels):
        rt.fail(node, "quantizer levels must be a sorted list of finite numbers that fits its code")
    res = rt.number(node, q.get("resolution"), "resolution", 1e-30)
    if any(abs(v / res - round(v / res)) > 0 for v in levels):
        rt.fail(node, "quantizer levels must be multiples of its resolution")


def _check_produced_levels(rt, node: dict, iq: dict) -> None:
    """An activation quantizer computes its codes (from ``kind``, ``bits``, ...): every code it can
    produce, the extremes included, must be one of the declared ``levels``, which the proof reads."""
    q = iq["quantizer"]
    top = MAX_SHIFT_BITS if q["kind"] == "shift" else MAX_UNIFORM_BITS
    if not 0 <= q["bits"] <= top:
        rt.fail(node, f"{q['kind']} input quantizer bits must be 0 to {top}")
    fn = QF.shift_quantize if q["kind"] == "shift" else QF.uniform_quantize
    probe = torch.tensor([-3.0e38, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0e38, *q["levels"]], dtype=torch.float32)
    try:
        hard = fn(probe, int(q["bits"]), q["rounding"], q["zero"], q["signed"], bool(q.get("full_codes", False)))
    except Exception as exc:  # a layout the quantizer itself refuses
        rt.fail(node, f"input quantizer cannot run ({type(exc).__name__}: {str(exc)[:100]})")
    produced = set(torch.round(hard.double() / q["resolution"]).long().tolist())
    if not produced <= set(level_ints(iq).tolist()):
        rt.fail(node, "input quantizer levels are not the levels it produces")


def check_act_quantizer(rt, node: dict, iq: dict) -> None:
    if not isinstance(iq, dict):
        rt.fail(node, "malformed quantizer")
    check_quantizer(rt, node, iq.get("quantizer"))
    _check_produced_levels(rt, node, iq)
    if iq.get("channel_dim") not in (1, -1):
        rt.fail(node, "input channel_dim must be 1 or -1")
    if iq.get("policy") == "learned_pot":
        if isinstance(iq.get("log2_scale"), bool) or not isinstance(iq.get("log2_scale"), int) \
                or not -100 <= iq["log2_scale"] <= 100:
            rt.fail(node, "log2_scale must be an integer in [-100, 100]")
    elif iq.get("policy") == "standardize":
        mean = rt.tensor(iq["running_mean"])
        rt.tensor(iq["running_var"], mean.shape)
        rt.number(node, iq.get("clip_sigma"), "clip_sigma", 1e-30)
        rt.number(node, iq.get("norm_eps"), "norm_eps")
    else:
        rt.fail(node, "unknown input policy")


def check_output_quantizer(rt, node: dict) -> None:
    """A node's ``output_quantizer``, when it has one: an activation quantizer with a learned
    power-of-two scale (its integers are on a power-of-two grid)."""
    spec = node.get("output_quantizer")
    if spec is None:
        return
    if not isinstance(spec, dict) or spec.get("policy") != "learned_pot":
        rt.fail(node, "an output quantizer must have a learned power-of-two scale")
    check_act_quantizer(rt, node, spec)


def quantize_input(rt, x: torch.Tensor, spec: dict) -> np.ndarray:
    """An input quantizer on float values: the integers on its grid (see :func:`input_unit`)."""
    q = spec["quantizer"]
    if spec["policy"] == "learned_pot":
        z = x * (1.0 / torch.exp2(torch.tensor(float(spec["log2_scale"]))))
    else:
        dim = spec["channel_dim"]
        moved = x.movedim(dim, 1)
        flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
        gain = torch.full((flat.shape[1],), 1.0 / spec["clip_sigma"], dtype=x.dtype)
        z = F.batch_norm(flat, torch.from_numpy(rt.tensor(spec["running_mean"])),
                         torch.from_numpy(rt.tensor(spec["running_var"])), gain, None, False, 0.0,
                         spec["norm_eps"]).reshape(moved.shape).movedim(1, dim)
    fn = QF.shift_quantize if q["kind"] == "shift" else QF.uniform_quantize
    hard = fn(z, int(q["bits"]), q["rounding"], bool(q["zero"]), bool(q["signed"]), bool(q.get("full_codes", False)))
    return torch.round(hard.double() / q["resolution"]).long().numpy()


def input_unit(spec: dict) -> float:
    """What one integer of an input quantizer's grid is worth."""
    scale = 2.0 ** spec["log2_scale"] if spec["policy"] == "learned_pot" else float(np.float32(spec["clip_sigma"]))
    return scale * spec["quantizer"]["resolution"]


def level_ints(spec: dict) -> np.ndarray:
    """An activation quantizer's levels as integers on its grid."""
    q = spec["quantizer"]
    return np.round(np.asarray(q["levels"], dtype=np.float64) / q["resolution"]).astype(np.int64)


def boundaries(q: dict) -> tuple[list[float], list[float]]:
    """A quantizer's magnitudes and the thresholds between them, as comparisons read them: a
    magnitude ``a`` maps to ``magnitudes[i]``, ``i`` the count of thresholds it reaches (``a > t``
    for ceil, ``a >= t`` for nearest: the log-domain midpoint ``m * sqrt 2`` of shift levels, in
    float32 as the quantizer's bit-pattern rounding has it, or the midpoint of uniform ones)."""
    mags = sorted({abs(v) for v in q["levels"] if v != 0})
    if q["rounding"] == "ceil":
        return mags, mags[:-1]
    if q["kind"] == "shift":
        sqrt2 = float(np.float32(np.sqrt(2.0)))
        return mags, [m * sqrt2 for m in mags[:-1]]
    return mags, [m + mags[0] / 2 for m in mags[:-1]]
