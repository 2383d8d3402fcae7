"""The bundle file format (``.sqb``): one file, a JSON manifest and tensors, integrity-checked.

Layout (all integers little-endian)::

    b"SQBUNDLE"              8 bytes  magic
    version                  u32      FORMAT_VERSION
    body length              u64      n
    body                     n bytes  zlib-compressed safetensors blob; its metadata holds {"manifest": JSON}
    SHA-256                  32 bytes of everything above

Shift and uniform codes are bit-packed at their code width (:func:`pack_codes`): a 3-bit code takes
3 bits. Reading checks, in order, the magic, the version, the length, the checksum, the safetensors
blob and the manifest's references; any failure raises :class:`BundleError` saying which, and
nothing is returned half-loaded. See ``docs/bundle.md``.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np

from ... import unique_json
from ...errors import BundleError
from ...unique_json import safetensors_header

MAGIC = b"SQBUNDLE"
FORMAT_VERSION = 3  # 2: requantization thresholds; 3: declared integer types, pixels, integer logits
_HEAD = struct.Struct("<8sIQ")
_DIGEST = 32
MAX_BODY = 1 << 30  # bytes of the inflated body: a small file cannot inflate without bound


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integer codes below ``2^bits`` into a uint8 array, ``bits`` bits each."""
    codes = np.asarray(codes).reshape(-1).astype(np.uint64)
    if codes.size and int(codes.max()) >= 1 << bits:
        raise BundleError(f"code {int(codes.max())} does not fit {bits} bits")
    bit_matrix = ((codes[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes` (int64 codes)."""
    needed = (count * bits + 7) // 8
    if packed.dtype != np.uint8 or packed.size != needed:
        raise BundleError(f"packed codes: expected {needed} bytes for {count} codes of {bits} bits, "
                          f"found {packed.size} {packed.dtype}")
    flat = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    return (flat << np.arange(bits, dtype=np.int64)).sum(axis=1)


def write_bundle(path: str | Path, manifest: dict, tensors: dict[str, np.ndarray]) -> int:
    """Write a bundle atomically (temporary file, then rename); returns its size in bytes."""
    from safetensors.numpy import save

    blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={"manifest": json.dumps(manifest, sort_keys=True, separators=(",", ":"))})
    body = zlib.compress(blob, 9)
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(body))
    data = head + body
    data += hashlib.sha256(data).digest()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # one name per target: a write the process was killed in
    try:                                        # is replaced by the next write to the same path
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def read_bundle(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(manifest, tensors)`` of a bundle, refused with :class:`BundleError` unless intact."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from None
    return parse_bundle(data, str(path))


def parse_bundle(data: bytes, name: str = "bundle") -> tuple[dict, dict[str, np.ndarray]]:
    if len(data) < _HEAD.size + _DIGEST:
        raise BundleError(f"{name}: truncated ({len(data)} bytes is shorter than any bundle)")
    magic, version, body_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BundleError(f"{name}: not a shiftquant bundle (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise BundleError(f"{name}: bundle format version {version}; this shiftquant reads version {FORMAT_VERSION}")
    expected = _HEAD.size + body_len + _DIGEST
    if len(data) != expected:
        raise BundleError(f"{name}: truncated or padded: {len(data)} bytes, the header says {expected}")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise BundleError(f"{name}: checksum mismatch: the file is corrupt or was modified")
    try:
        inflate = zlib.decompressobj()
        body = inflate.decompress(data[_HEAD.size:-_DIGEST], MAX_BODY)
        if inflate.unconsumed_tail or not inflate.eof:
            raise BundleError(f"{name}: the body inflates beyond {MAX_BODY} bytes, or is cut short")
        from safetensors.numpy import load

        metadata = safetensors_header(body, len(body)).get("__metadata__") or {}  # unique keys, as the manifest's
        manifest = unique_json.loads(metadata["manifest"])
        tensors = load(body)
    except BundleError:
        raise
    except Exception as exc:  # a checksummed file that still does not parse: written by something else
        raise BundleError(f"{name}: malformed body: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "shiftquant-bundle":
        raise BundleError(f"{name}: manifest is not a shiftquant bundle manifest")
    return manifest, tensors
