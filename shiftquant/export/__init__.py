"""Export: the hard model as a shift-only bundle, its reference runtime, ONNX and QONNX."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ExportError
from .format.bundle import FORMAT_VERSION, read_bundle, write_bundle
from .format.pixels import PixelInput
from .onnx.lower import run_onnx, write_onnx
from .reference.runtime import Runtime
from .reference.runtime import load_bundle as load_reference
from .trace import agreement
from .trace.check import ExportReport, check_exportable
from .trace.exporter import Exporter


def export(model: nn.Module, path: str | Path, example_input: torch.Tensor,
           input_spec: PixelInput | None = None, check_input: torch.Tensor | None = None,
           allow_approximate: bool = False) -> Runtime:
    """Write the hard (eps = 0) ``model`` as a bundle at ``path``; returns its runtime.

    ``example_input`` fixes the input shape (its batch size does not matter). With ``input_spec``
    (how the model's input comes from integer pixels) the bundle takes the pixels themselves.

    Before writing, the bundle runs beside the PyTorch hard model on ``check_input`` (default: the
    example input and a few seeded random inputs; :mod:`.trace.agreement`): top-1 agreement and
    the largest logit difference go into the manifest (``agreement``). A bundle that disagrees
    (any difference for an exact bundle) raises :class:`ExportError` naming the first node that
    diverges, and writes nothing, unless ``allow_approximate``.
    """
    exporter = Exporter(model)
    manifest, tensors = exporter.build(example_input, input_spec)
    x = check_input if check_input is not None else agreement.check_inputs(example_input, input_spec)
    found = agreement.measure(exporter.model, manifest, tensors, x)
    if not found.ok and not allow_approximate:
        raise ExportError(found.failure(bool(manifest["exact"])))
    manifest["agreement"] = found.record()
    manifest["format_version"] = FORMAT_VERSION
    write_bundle(path, manifest, tensors)
    return load_bundle(path)


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor, check: bool = True,
                input_spec: PixelInput | None = None) -> float | None:
    """Write the hard ``model`` as an ONNX graph at ``path``: the bundle :func:`export` builds,
    lowered op by op (``shiftquant.export.onnx``), so onnxruntime computes what the reference
    runtime computes (integers exactly; float ops up to rounding). With ``check``, run it in
    onnxruntime on ``example_input`` and return the largest absolute difference from the PyTorch
    hard model's output."""
    with tempfile.TemporaryDirectory() as tmp:
        rt = export(model, Path(tmp) / "model.sqb", example_input, input_spec)
    write_onnx(rt, path)
    if not check:
        return None
    got = run_onnx(path, rt.input_from_float(example_input.numpy()))
    return float(np.abs(got - hard_output(model, example_input)).max())


QONNX_FORMS = {"thresholds": "the bundle's integer graph, its requantizations (BatchNorm folded) as MultiThreshold "
                              "nodes: FINN's form",
               "float": "the float graph before requantization, BatchNorm as BatchNormalization: what hls4ml's "
                         "QONNX frontend reads"}


def export_qonnx(model: nn.Module, path: str | Path, example_input: torch.Tensor, check: bool = True,
                 form: str = "thresholds") -> float | None:
    """Write the hard ``model`` as a QONNX graph at ``path`` (``shiftquant.export.qonnx``; needs
    the ``[fpga]`` extra; ``docs/fpga.md``), weights as ``Quant`` constants. ``form``:
    ``"thresholds"`` (default) lowers the bundle :func:`export` builds, every requantization it
    folds (BatchNorm, bias, activation quantizer) one ``MultiThreshold`` on integers, as FINN reads
    it; ``"float"`` the graph before requantization (BatchNorm, ``Quant`` activation grids on float
    values), which hls4ml's frontend converts. With ``check``, run it with
    ``qonnx.core.onnx_exec`` on ``example_input`` and return the largest absolute difference from
    the PyTorch hard model's output (float rounding: the graph computes in float32)."""
    from .graph.loader import Graph
    from .qonnx.lower import (
        cleaned,
        mark_po2,
        run_qonnx,
        to_qonnx,
        to_qonnx_thresholds,
        without_identities,
    )

    if form not in QONNX_FORMS:
        raise ConfigError("form", form, " or ".join(f"{k!r} ({v})" for k, v in QONNX_FORMS.items()))
    if form == "thresholds":
        with tempfile.TemporaryDirectory() as tmp:
            graph = export(model, Path(tmp) / "model.sqb", example_input)
        wrapper = cleaned(without_identities(cleaned(to_qonnx_thresholds(graph))).model)
    else:
        exporter = Exporter(model)
        exporter.build(example_input)
        wrapper = cleaned(to_qonnx(Graph(*exporter.unfolded, "export", strict=False)))
    mark_po2(wrapper).save(str(path))
    if not check:
        return None
    return float(np.abs(run_qonnx(path, example_input.numpy()) - hard_output(model, example_input)).max())


def hard_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The hard (eps = 0) ``model``'s output on ``x``, the model itself left as it is."""
    from ..convert import set_slope

    hard = copy.deepcopy(model).eval()
    set_slope(hard, 0.0)
    with torch.no_grad():
        return hard(x).numpy()


def load_bundle(path: str | Path, backend: str = "reference", threads: int | None = None):
    """Read and verify a bundle; ``run(x)`` on what comes back executes it.

    ``backend="reference"``: the numpy runtime, the executable specification. ``backend="c"``: the
    bundle's generated C code compiled for this machine (cached; ``docs/codegen.md``), same
    results bit for bit, on ``threads`` threads (default: PyTorch's thread count).
    """
    rt = load_reference(path)
    if backend == "reference":
        return rt
    if backend == "c":
        from .c import CRuntime
        return CRuntime(rt, threads=threads)
    from ..errors import ConfigError
    raise ConfigError("backend", backend, "'reference' or 'c'")


__all__ = ["PixelInput", "Runtime", "export", "export_onnx", "export_qonnx", "load_bundle", "load_reference", "read_bundle"]
