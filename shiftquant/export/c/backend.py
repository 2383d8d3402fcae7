"""The native host backend: the generated C compiled into a shared library, called through cffi.

The library is built once per generated source (a function of the bundle), compiler and flags, and
cached (``$SHIFTQUANT_CACHE_DIR/c`` or ``~/.cache/shiftquant/c``). The host adds one function to the
generated code, ``NAME_batch``, which runs a batch with OpenMP: images in parallel (one arena per
thread) when the batch has at least as many images as threads, else one image at a time with each
shift layer's output channels in parallel.

What the cache guarantees (a library is native code run in this process):

- The cache directory, and the parents of it that we create, are made mode 0700. An existing one
  that is a symbolic link, not owned by the current user, or writable by group or others is not
  used: a warning names it and why, and libraries are built in a private temporary directory.
- A library is only ever loaded after the SHA-256 of its bytes matched the digest written with it
  (``NAME-KEY.so`` and ``NAME-KEY.sha256``, each written to a temporary file in the directory and
  renamed, the digest last), and only if it is a regular file of ours, not a symbolic link. Anything
  else (planted, truncated, half-written, no digest) is rebuilt and replaced, never loaded.
- A cache that cannot be written (read-only, full) gives a warning and a build in a private
  temporary directory, never an error. Compilation runs in a `.build-*` folder of the directory the library goes to.
- Temporary entries (``.build-*``, ``.*.tmp``) left for over an hour by killed builds are removed.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ...errors import BundleError, CodegenError, CompilerNotFoundError
from .emit import emit
from .lower import Program, lower
from .program import HOST_CHUNK

FLAGS = ["-std=c99", "-O3", "-march=native", "-fPIC", "-shared"]
OPENMP = ["-fopenmp"]
# GCC's unroll-and-jam interleaves two taps' lane loops and loses their vectorization.
GCC_ONLY = ["-fno-loop-unroll-and-jam"]
# GCC's x86 tuning for AMD's Zen zeroes a block's small accumulator arrays with `rep stos`, whose
# start-up costs more than the stores: on ResNet-20 as tables, 7.7 % of the library's `perf` samples,
# and without it the library ran 1.15-1.18x as fast (interleaved A/B runs, batch 1). Stores in a
# vector loop up to 2 KB; larger memsets (and every memcpy) stay calls to the C library.
GCC_X86 = ["-mmemset-strategy=vector_loop:2048:noalign,libcall:-1:noalign"]
X86 = ("x86_64", "amd64", "x86", "i386", "i686")

_HOST = """\
#include <stdlib.h>
#include "{name}.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* n inputs -> n outputs. Images in parallel when there are enough of them, else channels. */
int {name}_batch(int n, const void *input, int32_t *output, int threads)
{{
    const {name}_input_t *in = (const {name}_input_t *)input;
    unsigned char *arenas;
    int i, status = 0, teams = 1;
    if (threads < 1) threads = 1;
#ifdef _OPENMP
    omp_set_num_threads(threads);
    if (n >= threads) teams = threads;
#endif
    arenas = (unsigned char *)calloc((size_t)teams, {up}_ARENA_BYTES + 64);
    if (!arenas) return -1;
    if (teams > 1) {{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(teams) reduction(|:status)
#endif
        for (i = 0; i < n; i++) {{
            int team = 0;
#ifdef _OPENMP
            team = omp_get_thread_num();
#endif
            status |= {name}_invoke(in + (size_t)i * {up}_INPUT_SIZE, output + (size_t)i * {up}_OUTPUT_SIZE,
                                    arenas + (size_t)team * ({up}_ARENA_BYTES + 64));
        }}
    }} else {{
        for (i = 0; i < n; i++)
            status |= {name}_invoke(in + (size_t)i * {up}_INPUT_SIZE, output + (size_t)i * {up}_OUTPUT_SIZE, arenas);
    }}
    free(arenas);
    return status;
}}
"""


# The host backend stores weights as precomputed tables (fastest) up to this many bytes of
# constants; beyond, as the offset lists without the level tables (those take most of a large
# model's bytes and compile time), up to LISTS_UP_TO (built in under a minute, once: the library
# is cached); beyond, as the packed codes. Measured (BENCHMARKS.md): the timm ViT-tiny as lists
# 6.3 MB, built in 9 s, 3.5x faster than packed (0.8 MB, 7 s; tables 25.8 MB, 33 s); ResNet-18 at
# 224 px as lists 30.3 MB, built in 41 s, 2.05x faster than packed (4.5 MB, 13 s).
TABLES_UP_TO = 4 << 20
LISTS_UP_TO = 32 << 20
HOST_FORMATS = (("tables", TABLES_UP_TO), ("lists", LISTS_UP_TO), ("packed", None))


# Temporary entries of the cache directory older than this (seconds) were left by killed builds.
STALE_AFTER = 3600
# This process's private fallback directory, once made (a list: the tests reset it).
_PRIVATE: list[Path] = []


def cache_dir() -> Path:
    """Where the libraries are cached (as configured; :func:`_directory` checks it before use)."""
    root = os.environ.get("SHIFTQUANT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "shiftquant") / "c"


def _make_private(path: Path) -> None:
    """``path`` and its missing parents created mode 0700 (``mkdir(parents=True)`` ignores the mode
    for the parents)."""
    for part in reversed([path, *path.parents]):
        if os.path.lexists(part):
            continue
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:  # made meanwhile by another process: checked below like any other
            continue
        os.chmod(part, 0o700)  # exactly 0700, whatever the umask


def _refusal(path: Path) -> str | None:
    """Why the directory ``path`` cannot hold libraries we load, or None when it can."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by the current user (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def _private_dir() -> Path:
    """This process's private temporary directory (0700, removed at exit)."""
    if not _PRIVATE:
        path = Path(tempfile.mkdtemp(prefix="shiftquant-c-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _PRIVATE.append(path)
    return _PRIVATE[0]


def _fallback(path: Path, why: str) -> Path:
    warnings.warn(f"shiftquant: not using the C library cache {path}: {why}; building in a private temporary "
                  f"directory instead (set SHIFTQUANT_CACHE_DIR to a directory of yours, mode 0700)", stacklevel=4)
    return _private_dir()


def _directory() -> Path:
    """The cache directory, created 0700 and checked; else (with a warning) a private temporary one."""
    path = cache_dir()
    try:
        _make_private(path)
        why = _refusal(path)
    except OSError as err:
        why = f"it cannot be created ({err})"
    return path if why is None else _fallback(path, why)


def _sweep(directory: Path) -> None:
    """Best effort: remove the ``.build-*`` folders and ``.*.tmp`` files killed builds left (over an hour old)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(".build-") or (entry.name.startswith(".") and entry.name.endswith(".tmp"))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > time.time() - STALE_AFTER:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _read_own(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The bytes of ``path`` and its stat, if it is a regular file owned by us (a symbolic link is
    not followed); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        return f.read(), st


def _verified(library: Path) -> Path | None:
    """``library`` if its bytes match the SHA-256 recorded next to it, else None (never load it).

    The hash is of the bytes read through one open file; the file is then checked to be still the
    same one (device, inode, size, mtime), so a rename over it while we read is not missed. CRuntime
    dlopens the path afterwards: that gap is safe because the directory is ours and 0700 (checked by
    :func:`_directory`), so only our own processes can change it, and they only ever rename verified
    builds into place. (A private copy of the bytes to dlopen would close the gap without that
    argument, but would give a different path per load and defeat the cache's one-library reuse.)
    """
    digest, read = _read_own(library.with_suffix(".sha256")), _read_own(library)
    if digest is None or read is None:
        return None
    data, st = read
    if hashlib.sha256(data).hexdigest() != digest[0].decode("ascii", "replace").strip():
        return None
    try:
        now = os.stat(library, follow_symlinks=False)
    except OSError:
        return None
    same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return library if same else None


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, written to a ``.*.tmp`` file of the same directory and renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _store(directory: Path, stem: str, library: bytes) -> Path:
    """The library written as ``stem.so``, then its digest as ``stem.sha256`` (last: a library is
    never recorded before it is whole)."""
    path = directory / f"{stem}.so"
    _write_atomic(path, library)
    _write_atomic(path.with_suffix(".sha256"), hashlib.sha256(library).hexdigest().encode() + b"\n")
    return path


def find_compiler() -> str:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise CompilerNotFoundError("no C compiler found ($CC, cc, gcc or clang on PATH): the C backend compiles the "
                                "generated code into a library; install one, or use backend='reference' (the numpy "
                                "runtime)")


def _cpu() -> str:
    """What ``-march=native`` compiles for: a cache shared by several machines keeps one library each."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _compile(cc: str, flags: list[str], name: str, header: str, source: str, host: str, where: Path) -> bytes:
    """The shared library's bytes, compiled in a ``.build-*`` folder of the (checked, private) cache
    directory ``where``: one that a killed process leaves behind is swept an hour later."""
    with tempfile.TemporaryDirectory(dir=where, prefix=".build-") as tmp:
        tmp = Path(tmp)
        (tmp / f"{name}.h").write_text(header)
        (tmp / f"{name}.c").write_text(source)
        (tmp / "host.c").write_text(host)
        out = tmp / "lib.so"
        cmd = [cc, *flags, "-o", str(out), f"{name}.c", "host.c"]
        done = subprocess.run(cmd[:1] + OPENMP + cmd[1:], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:  # no OpenMP: one thread
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise CodegenError(f"{cc} failed to compile the generated C:\n{done.stderr[-2000:]}")
        return out.read_bytes()


def build(name: str, header: str, source: str) -> Path:
    """The shared library of the generated code: a verified cached one, else compiled and cached."""
    cc = find_compiler()
    host = _HOST.format(name=name, up=name.upper())
    about = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    gcc = "Free Software Foundation" in about
    flags = FLAGS + (GCC_ONLY if gcc else []) + (GCC_X86 if gcc and platform.machine().lower() in X86 else [])
    key = hashlib.sha256("\0".join([header, source, host, cc, about, _cpu(), *flags]).encode()).hexdigest()[:20]
    stem = f"{name}-{key}"
    directory = _directory()
    _sweep(directory)
    for place in dict.fromkeys([directory, *_PRIVATE]):  # the cache, then this process's fallback
        found = _verified(place / f"{stem}.so")
        if found:
            return found
    library = _in_cache_or_private(directory, lambda where: _compile(cc, flags, name, header, source, host, where))
    return _in_cache_or_private(directory, lambda where: _store(where, stem, library))


def _in_cache_or_private(directory: Path, action):
    """``action(directory)``; where that directory cannot be written, with a warning, ``action`` in
    this process's private directory instead."""
    try:
        return action(directory)
    except OSError as err:
        if directory in _PRIVATE:
            raise CodegenError(f"cannot write the compiled library to {directory}: {err}") from err
        private = _fallback(directory, f"it cannot be written ({err})")
    try:
        return action(private)
    except OSError as err:
        raise CodegenError(f"cannot write the compiled library to {private}: {err}") from err


class CRuntime:
    """A bundle run by its generated C code. ``run(x)`` takes and returns what the reference
    runtime's ``run`` does, and gives the same values bit for bit. ``weights``: a form of
    :func:`.lower.lower`; None: the first of :data:`HOST_FORMATS` within its budget of constants
    (tables up to 4 MB, lists up to 32 MB, else packed codes)."""

    def __init__(self, reference, threads: int | None = None, name: str = "model", weights: str | None = None,
                 borders: str = "shared"):
        from cffi import FFI

        self.reference = reference
        self.manifest, self.nodes, self.float_ops = reference.manifest, reference.nodes, reference.float_ops
        for form, most in HOST_FORMATS if weights is None else ((weights, None),):
            self.program: Program = lower(reference, name, form, borders, HOST_CHUNK)
            if most is None or self.program.flash_bytes <= most:
                break
        header, source = emit(self.program)
        self.library = build(name, header, source)
        self.threads = threads
        self._ffi = FFI()
        self._ffi.cdef(f"int {name}_batch(int n, const void *input, int32_t *output, int threads);")
        self._lib = self._ffi.dlopen(str(self.library))
        self._batch = getattr(self._lib, f"{name}_batch")

    def input_from_float(self, x):
        """What ``run`` takes, from the float model's input (the reference runtime's conversion)."""
        return self.reference.input_from_float(x)

    def example_input(self, batch: int = 1):
        return self.reference.example_input(batch)

    def __repr__(self) -> str:
        return f"CRuntime({self.reference.source!r}, {self.library.name})"

    # ------------------------------------------------------------------ the host edges
    def inputs(self, x) -> np.ndarray:
        """What the C code takes: pixels, or the first shift layer's input integers (quantized here
        by the reference runtime's own quantizer)."""
        p = self.program
        t = p.input
        x = np.asarray(x)
        shape = p.input_node["shape"]
        if x.ndim < 2 or list(x.shape[1:]) != shape:
            raise BundleError(f"input shape {list(x.shape)}: expected (batch, {', '.join(map(str, shape))})")
        if p.input_kind == "pixels":
            if not np.issubdtype(x.dtype, np.integer):
                raise BundleError(f"input of dtype {x.dtype}: this bundle takes integer pixels 0..{t.hi}")
            if x.size and (int(x.min()) < t.lo or int(x.max()) > t.hi):
                raise BundleError(f"input pixels {int(x.min())}..{int(x.max())} outside {t.lo}..{t.hi}")
            return np.ascontiguousarray(x, dtype=_NP[t.dtype])
        try:
            codes = self.reference.quantize_input(torch.from_numpy(x.astype(np.float32)),
                                                  p.input_layer["input_quantizer"])
        except (RuntimeError, ValueError, OverflowError, TypeError) as exc:
            raise BundleError(f"{self.reference.source}: the first layer's input quantizer cannot run "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if codes.size and (int(codes.min()) < t.lo or int(codes.max()) > t.hi):  # the proof's range
            raise BundleError(f"{self.reference.source}: input codes {int(codes.min())}..{int(codes.max())} outside "
                              f"the proven {t.lo}..{t.hi}")
        return np.ascontiguousarray(codes, dtype=_NP[t.dtype])

    def execute(self, x) -> np.ndarray:
        """The C code's int32 outputs for a batch: integer logits, or the last layer's accumulators."""
        inputs = self.inputs(x)
        out = np.empty((inputs.shape[0], *self._out_shape()), dtype=np.int32)
        threads = self.threads or torch.get_num_threads()
        status = self._batch(inputs.shape[0], self._ffi.from_buffer(inputs), self._ffi.from_buffer("int32_t[]", out),
                             threads)
        if status != 0:
            raise CodegenError(f"the C code failed (status {status}: out of memory for its arenas)")
        return out

    def _out_shape(self) -> tuple[int, ...]:
        c, h, w = self.program.output.shape
        return (c,) if self.program.output_node["op"] == "shift_linear" else (c, h, w)

    def run_int(self, x) -> tuple[np.ndarray, float]:
        """``(integers, unit)``: the logits are ``integers x unit`` (bundles with integer logits)."""
        if self.program.output_kind != "logits":
            raise CodegenError("run_int needs a bundle with integer logits (int_output); this one's last layer "
                               "outputs float values")
        return self.execute(x).astype(np.int64), self.program.logit_unit

    def run(self, x) -> np.ndarray:
        """Float32 logits, as the reference runtime's ``run`` gives them."""
        ints = self.execute(x)
        if self.program.output_kind == "logits":
            return (ints.astype(np.float64) * self.program.logit_unit).astype(np.float32)
        return self.reference.dequantize(self.program.output_node, ints.astype(np.int64)).numpy()


_NP = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "int32": np.int32}
