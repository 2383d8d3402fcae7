"""Data movement and transformers in C: the token kernels (integer LayerNorm, shiftmax) compute
exactly the integers their Python definitions do; a timm ViT bundle runs in the C backend bit for
bit equal to the PyTorch hard model, with no multiply in its shift layers nor in its attention
products (q, k, v and the shiftmax's probabilities are zeros and powers of two); every padding
mode runs in C on the integer stream."""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from shiftquant.export.c.emit import _PRELUDE, _Source
from shiftquant.export.c.program import LayerNormInt, Shiftmax, Tensor
from shiftquant.nn import shiftmax as SM
from shiftquant.nn.integer_norm import normalized_ints
from tests.export.models import deploy_exported
from tests.export.test_codegen import MULTIPLY, STRICT, assert_no_multiply_in_shift_kernels, compile_object, kernels_of
from tests.export.test_mobile import PIXELS, exported

needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("objdump") is None,
                              reason="no C compiler or objdump")


def _run_kernels(kernels, inputs, tmp_path) -> list[list[int]]:
    """Each kernel's output on its input rows (int32), from a C program of the emitted kernels."""
    printer = _Source.__new__(_Source)
    printer.helpers = set()
    bodies = [{LayerNormInt: printer.layer_norm, Shiftmax: printer.shiftmax}[type(k)](k) for k in kernels]
    main = []
    for i, (k, x) in enumerate(zip(kernels, inputs)):
        values = ", ".join(str(int(v)) for v in x.reshape(-1))
        main.append(f"    {{ static const int32_t in[{x.size}] = {{{values}}}; static int32_t out[{x.size}]; unsigned i;\n"
                    f"      {k.name}(in, out); for (i = 0; i < {x.size}u; i++) printf(\"%ld \", (long)out[i]);"
                    " printf(\"\\n\"); }")
    text = "#include <stdint.h>\n#include <stdio.h>\n" + _PRELUDE + "".join(printer.helper_text(h) for h in
                                                                          sorted(printer.helpers))
    text += "\n".join(bodies) + "\nint main(void)\n{\n" + "\n".join(main) + "\n    return 0;\n}\n"
    (tmp_path / "k.c").write_text(text)
    subprocess.run([shutil.which("cc"), *STRICT, "-O2", "k.c", "-o", "k"], cwd=tmp_path, check=True)
    lines = subprocess.run([str(tmp_path / "k")], capture_output=True, text=True, check=True).stdout.splitlines()
    return [[int(v) for v in line.split()] for line in lines]


def _rows(rng, n: int, top: int) -> np.ndarray:
    """Rows that reach every branch: zeros, constant, one outlier, extremes, a common power of two,
    mixed signs, random."""
    rows = [np.zeros(n), np.full(n, 7), np.r_[np.full(n - 1, -3), [top]][-n:], np.full(n, -top),
            rng.integers(-top, top + 1, n), rng.integers(-64, 65, n) << 9, rng.integers(-2, 3, n),
            np.where(np.arange(n) % 2, top, -top)]
    return np.stack(rows).astype(np.int64)


@needs_cc
def test_the_c_token_kernels_compute_their_definitions(tmp_path):
    rng = np.random.default_rng(0)
    kernels, inputs, expected = [], [], []
    for i, n in enumerate((1, 2, 7, 192)):  # LayerNorm rows, inputs up to the int32 range
        x = _rows(rng, n, (1 << 31) - 1)
        signs = rng.choice([-1, 1], n).astype(np.int8)
        a = Tensor("x", "int32", (len(x), 1, n), -(1 << 31) + 1, (1 << 31) - 1)
        kernels.append(LayerNormInt(f"ln{i}", "ln", [a], Tensor("z", "int32", a.shape, 0, 0), n=n, signs=signs))
        inputs.append(x)
        expected.append(normalized_ints(torch.from_numpy(x)).numpy() * signs)
    for i, (n, scale, unit, bits) in enumerate([(1, 0.125, 2.0**-6, 3), (5, 0.3, 2.0**-2, 1), (65, 0.125, 2.0**-9, 4),
                                                (16, 5.0, 1.0, 2), (9, 1e-3, 2.0**-20, 4)]):
        s = _rows(rng, n, (1 << 25) - 1)  # scores the proof admits
        k, f = SM.exponent_multiplier(scale, unit)
        a = Tensor("s", "int32", (len(s), 1, n), -(1 << 25), 1 << 25)
        kernels.append(Shiftmax(f"sm{i}", "sm", [a], Tensor("p", "int32", a.shape, 0, 0), n=n, multiplier=(k, f),
                                shift_bits=bits))
        inputs.append(s)
        expected.append(SM.shiftmax_codes(torch.from_numpy(s), k, f, bits).numpy())
    outputs = _run_kernels(kernels, inputs, tmp_path)
    for k, out, want in zip(kernels, outputs, expected):
        assert out == want.reshape(-1).tolist(), k.name
    assert any(v != 0 for v in outputs[-1]) and any(v < 0 for v in outputs[3])  # not degenerate


@needs_cc
def test_a_vit_runs_in_c_bit_for_bit_with_shift_products_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path / "cache"))
    model, rt, path, images = exported("timm vit_tiny_patch16_224", tmp_path)
    images = np.concatenate([images, np.zeros_like(images[:1]), np.full_like(images[:1], 255)])
    with torch.no_grad():
        ref = model(PIXELS.to_float(images)).numpy()
    assert rt.manifest["integer_only"]
    native = sq.load_bundle(path, backend="c")
    assert np.array_equal(native.run(images), ref)
    program = sq.codegen(rt, tmp_path, "net")
    source = (tmp_path / "net.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    assert not re.search(r"\b(float|double|malloc)\b", code)
    assert 0 < program.arena_bytes and program.flash_bytes > 0
    assert_no_multiply_in_shift_kernels(rt, tmp_path, ["-O2"])
    functions = kernels_of(compile_object(tmp_path, "net", ["-O2"]))
    products = {f: ops for f, ops in functions.items() if "_matmul_" in f or "_codes_" in f}
    matmuls = sum(1 for n in rt.nodes if n["op"] == "matmul")  # q @ k^T and attention @ v in each of 2 blocks
    assert matmuls == 4 and source.count("shift-add (one operand") == matmuls
    assert any("_matmul_" in f for f in products)  # gcc folds identical ones (-fipa-icf)
    assert not any(MULTIPLY.match(op) for ops in products.values() for op in ops)


class Pads(nn.Module):
    """Reflect, replicate, asymmetric zero and circular padding between convolutions, one of
    stride 3 (its input split into phases modulo 3, as a ViT's patches of 7 are)."""

    def __init__(self):
        super().__init__()
        convs = [(3, 8, 1, 1), (8, 8, 0, 1), (8, 12, 0, 1), (12, 8, 0, 3), (8, 8, 0, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=p, stride=s) for i, o, p, s in convs)
        self.bns = nn.ModuleList(nn.BatchNorm2d(o) for _, o, _, _ in convs)
        self.fc = nn.Linear(8 * 2 * 3, 10)

    def forward(self, x):
        pads = [None, ((1, 1, 1, 1), "reflect"), ((2, 0, 1, 1), "replicate"), ((1, 2, 0, 1), "constant"),
                ((1, 1, 1, 1), "circular")]
        for conv, bn, pad in zip(self.convs, self.bns, pads):
            x = F.relu(bn(conv(x if pad is None else F.pad(x, pad[0], mode=pad[1]))))
        return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))


@needs_cc
def test_every_padding_mode_and_a_stride_of_three_run_in_c_on_integers(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    rt, pixels, ref = deploy_exported(Pads().eval(), (8, 3, 16, 16), PIXELS, tmp_path / "m.sqb")
    assert rt.manifest["integer_only"] and sum(n["op"] == "pad" for n in rt.nodes) == 4
    assert float(np.std(ref)) > 1e-3
    assert np.array_equal(sq.load_bundle(rt.source, backend="c").run(pixels), ref)
