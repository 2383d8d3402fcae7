"""JSON read from files a user did not make, refusing duplicate keys.

Python's ``json`` keeps the last of two equal keys, other readers the first: a file with both means
different things to different tools (a reviewer's viewer and the loader). :func:`loads` refuses it.
:func:`safetensors_header` reads a safetensors file's JSON header this way, its length proven
against the file's before a byte of it is read.
"""
from __future__ import annotations

import json
import struct
from typing import BinaryIO

from .errors import MalformedJSONError, shown

# The most a safetensors header may take (safetensors' own limit): nothing larger is read.
MAX_HEADER = 100_000_000


def _unique(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise MalformedJSONError(f"duplicate key {shown(key)!r} in a JSON object")
        out[key] = value
    return out


def loads(text: str | bytes) -> object:
    """``json.loads(text)``, refusing any object that holds a key twice (:class:`.MalformedJSONError`)."""
    return json.loads(text, object_pairs_hook=_unique)


def safetensors_header(source: bytes | BinaryIO, size: int) -> dict:
    """The JSON header of a safetensors blob of ``size`` bytes: ``source`` is the blob, or a file
    at its start. A :class:`.MalformedJSONError` when the header's length passes the blob's, or
    when it is not a JSON object of unique keys (``json``'s own ``ValueError`` when it is not
    JSON); no more than the length field and the header are read."""
    read = (lambda at, n: source[at:at + n]) if isinstance(source, bytes) else (lambda at, n: source.read(n))
    first = read(0, 8)
    if len(first) < 8:
        raise MalformedJSONError(f"safetensors blob of {size} bytes has no header length")
    n = struct.unpack("<Q", first)[0]
    if n > min(size - 8, MAX_HEADER):
        raise MalformedJSONError(f"safetensors header of {n} bytes does not fit the {size}-byte blob")
    header = loads(read(8, n))
    if not isinstance(header, dict):
        raise MalformedJSONError("safetensors header is not a JSON object")
    return header
