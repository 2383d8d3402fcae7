"""The native host backend: the generated C compiled into a shared library, called through cffi.

The library is built once per generated source (a function of the bundle), compiler and flags, and
cached (``$SHIFTQUANT_CACHE_DIR/c`` or ``~/.cache/shiftquant/c``); it is written to a temporary
file and renamed, so a cached library is never half-written. The host adds one function to the
generated code, ``NAME_batch``, which runs a batch with OpenMP: images in parallel (one arena per
thread) when the batch has at least as many images as threads, else one image at a time with each
shift layer's output channels in parallel.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...errors import BundleError, CodegenError, CompilerNotFoundError
from .emit import emit
from .lower import Program, lower

FLAGS = ["-std=c99", "-O3", "-march=native", "-fPIC", "-shared"]
OPENMP = ["-fopenmp"]
# GCC's unroll-and-jam interleaves two taps' lane loops and loses their vectorization.
GCC_ONLY = ["-fno-loop-unroll-and-jam"]

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
# constants; beyond, as the packed codes (tables of a large model take long to compile).
TABLES_UP_TO = 4 << 20


def cache_dir() -> Path:
    root = os.environ.get("SHIFTQUANT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "shiftquant") / "c"


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


def build(name: str, header: str, source: str) -> Path:
    """The shared library of the generated code (cached)."""
    cc = find_compiler()
    host = _HOST.format(name=name, up=name.upper())
    about = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    flags = FLAGS + (GCC_ONLY if "Free Software Foundation" in about else [])
    key = hashlib.sha256("\0".join([header, source, host, cc, about, _cpu(), *flags]).encode()).hexdigest()[:20]
    path = cache_dir() / f"{name}-{key}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
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
        os.replace(out, path)
    return path


class CRuntime:
    """A bundle run by its generated C code. ``run(x)`` takes and returns what the reference
    runtime's ``run`` does, and gives the same values bit for bit."""

    def __init__(self, reference, threads: int | None = None, name: str = "model", weights: str | None = None):
        from cffi import FFI

        self.reference = reference
        self.manifest, self.nodes, self.float_ops = reference.manifest, reference.nodes, reference.float_ops
        self.program: Program = lower(reference.manifest, reference.tensors, name, weights or "tables")
        if weights is None and self.program.flash_bytes > TABLES_UP_TO:  # big models: packed codes
            self.program = lower(reference.manifest, reference.tensors, name, "packed")
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
        codes = self.reference.quantize_input(torch.from_numpy(x.astype(np.float32)), p.input_layer["input_quantizer"])
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
