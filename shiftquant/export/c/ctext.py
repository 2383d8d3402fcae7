"""Small helpers that print C text: constant arrays, the narrowest type for values, accumulator types."""
from __future__ import annotations

import numpy as np

from ...errors import CodegenError, shown
from .program import CTYPES, narrowest


def generated_text(text: str) -> str:
    """Text the generator wrote from checked numbers, for a comment: refused if it could end one."""
    if "*/" in text or "/*" in text or "??" in text or not all(" " <= ch <= "~" for ch in text):
        raise CodegenError(f"generated comment text is not plain: {shown(text)!r}")
    return text


def array(ctype: str, name: str, values, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    if not vals:
        vals = ["0"]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(vals)}] SQ_ONE_FORM = {{\n    {body}\n}};\n"


def smallest(values, signed: bool = True) -> str:
    """The narrowest C type of ``values`` (:func:`.program.narrowest`)."""
    return CTYPES[narrowest(values, signed)][0]


class Width:
    """The C types of an accumulator width: unsigned (wrap-around) and signed views."""

    def __init__(self, bits: int):
        self.acc, self.sacc = ("uint16_t", "int16_t") if bits == 16 else ("uint32_t", "int32_t")
        self.signed = "SQ_S16" if bits == 16 else "SQ_S32"
        self.shift = "unsigned" if bits == 16 else "uint32_t"  # shifted without promotion to int

    def compared(self, acc: str, m: str) -> str:
        """Accumulator ``acc`` as the signed value its thresholds compare, negated where ``m`` (an
        ``int32_t``) is all ones. 32 bits negate in unsigned arithmetic: a block's lanes past its
        values sum arena bytes, and there ``-INT32_MIN`` would be a signed overflow."""
        if self.sacc == "int16_t":
            return f"(int16_t)((SQ_S16({acc}) ^ {m}) - {m})"
        return f"SQ_S32(((uint32_t)({acc}) ^ (uint32_t){m}) - (uint32_t){m})"
