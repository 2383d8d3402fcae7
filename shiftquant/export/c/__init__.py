"""The C backend: a bundle as portable C99 (``codegen``) and as a native host library (``CRuntime``).

``lower`` turns the manifest into integer kernels over a planned arena, ``emit`` writes the C,
``backend`` compiles, caches and calls it. See ``docs/codegen.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import CodegenError, CompilerNotFoundError
from .backend import CRuntime
from .emit import emit
from .lower import Program, check_identifier, lower


def codegen(bundle, outdir: str | Path, name: str = "model", weights: str = "packed",
            borders: str = "shared") -> Program:
    """Write ``NAME.h`` and ``NAME.c`` for a bundle (a path or a loaded runtime) into ``outdir``;
    returns the lowered program (``flash_bytes``, ``ram_bytes``, ...). ``weights``: ``"packed"``
    (the bundle's bit-packed codes, least flash), ``"tables"`` (precomputed offset and level
    tables, fastest) or ``"lists"`` (the offsets without the level tables); ``borders``:
    ``"shared"`` (vector units) or ``"minimal"`` (least RAM: a microcontroller); see
    :func:`.lower.lower`."""
    from ..reference.runtime import load_bundle

    check_identifier(name)  # before anything is read or written
    rt = load_bundle(bundle) if isinstance(bundle, (str, Path)) else bundle
    program = lower(rt, name, weights, borders)
    header, source = emit(program)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for fname, text in ((f"{name}.h", header), (f"{name}.c", source)):
        tmp = out / f".{fname}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / fname)
    return program


__all__ = ["CRuntime", "CodegenError", "CompilerNotFoundError", "Program", "codegen", "emit", "lower"]
