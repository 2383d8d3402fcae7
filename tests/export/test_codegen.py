"""The C backend: strict C99 that compiles clean, shift-layer kernels without a multiply instruction,
and logits identical (atol 0) to the reference runtime's and the PyTorch hard model's."""
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import shiftquant as sq
from shiftquant.export.c import CodegenError, CompilerNotFoundError, CRuntime
from shiftquant.export.c import backend as c_backend
from shiftquant.export.c.emit import emit
from tests.export.models import build, pixel_batches, quantized_pixels
from tests.export.test_parity import hard_and_runtime

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
# Integer, vector and float multiplies, fused multiply-adds and dot products (x86, by mnemonic).
MULTIPLY = re.compile(r"^(i?mulx?|v?p?mul\w*|v?mul[sp][sd]\w*|v?pmadd\w*|vf\w*m(add|sub)\w*|v?pdp\w+|v?dpp[sd])$")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """One library cache for the module (a model built twice compiles once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path_factory.mktemp("c-cache")))
        yield


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """ResNet-20, W3A3 deploy, uint8 pixels in, integer logits out."""
    return hard_and_runtime("resnet20", 0, 2, True, tmp_path_factory.mktemp("r20"))


def assert_three_way(model, batches, px, rt, label, weights="packed", borders="shared"):
    """C backend == reference runtime == PyTorch hard model, bit for bit, on every batch."""
    p = np.concatenate(list(batches.values()))
    with torch.no_grad():
        ref = model(px.to_float(p)).numpy()
    native = CRuntime(rt, weights=weights, borders=borders)
    assert rt.manifest["integer_only"], rt.float_ops
    assert np.array_equal(rt.run(p), ref), f"{label}: reference runtime != PyTorch"
    out = native.run(p)
    assert np.array_equal(out, ref), f"{label}: C != PyTorch, max |diff| {np.abs(out - ref).max()}"
    ints, unit = native.run_int(p)
    assert unit == rt.run_int(p)[1] and np.array_equal(ints, rt.run_int(p)[0]), label
    assert not np.allclose(out, out.mean())  # a real, varied output
    return native


def kernels_of(objfile, objdump: str = "objdump") -> dict[str, list[str]]:
    """Mnemonics of every function of an object file (``objdump -d``; another target's
    ``objdump``, such as ``arm-none-eabi-objdump``, for its objects)."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(objfile)], capture_output=True, text=True,
                          check=True).stdout
    functions, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = functions.setdefault(head.group(1), [])
        elif current is not None and re.match(r"^\s+[0-9a-f]+:\s+\S", line):
            current.append(line.split(":", 1)[1].split()[0])
    return functions


def compile_object(directory, name, flags):
    """``directory/name.c`` compiled with the strict flags and ``flags``; the object file."""
    done = subprocess.run([shutil.which("cc"), *STRICT, *flags, "-c", f"{name}.c", "-o", f"{name}.o"],
                          cwd=directory, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return directory / f"{name}.o"


def deepest_call(directory, name, compiler, flags) -> tuple[int, dict[str, int]]:
    """Stack bytes of the deepest call ``directory/name.c`` can make, compiled by ``compiler`` with
    ``flags`` and ``-fstack-usage``: the entry points' frames, the largest layer's and the largest
    helper's (``sq_*``: a layer calls helpers, and no helper calls a layer); and every frame."""
    done = subprocess.run([compiler, "-std=c99", *flags, "-fstack-usage", "-c", f"{name}.c", "-o", "su.o"],
                          cwd=directory, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    frames = {}
    for line in (directory / "su.su").read_text().splitlines():
        where, size, kind = line.split("\t")
        # no frame that grows at run time; "dynamic,bounded": a frame realigned for 256-bit vectors
        # (-O0 -mavx2), at most 32 bytes more
        assert kind in ("static", "dynamic,bounded"), line
        frames[where.rsplit(":", 1)[1]] = int(size) + (32 if kind != "static" else 0)
    entry = frames.get(f"{name}_run", 0) + frames[f"{name}_invoke"]
    layers = [b for f, b in frames.items() if f.startswith(f"{name}_") and f not in (f"{name}_run", f"{name}_invoke")]
    helpers = [b for f, b in frames.items() if f.startswith("sq_")]
    return entry + max(layers) + max(helpers, default=0), frames


@pytest.mark.parametrize("model", ["resnet20", "cnn"])
def test_the_stated_stack_bytes_bound_the_deepest_call(model, resnet20, tmp_path):
    """``NAME_STACK_BYTES``, which the stated RAM adds to the arena, is at least the stack the C
    takes (gcc's -fstack-usage on the host, unoptimized and optimized, packed and tables weights)."""
    rt = resnet20[3] if model == "resnet20" else hard_and_runtime(model, 0, 2, True, tmp_path)[3]
    for weights in ("packed", "tables"):
        program = sq.codegen(rt, tmp_path, "net", weights=weights)
        for flags in (["-O0"], ["-O2"], ["-O3", "-march=native"]):
            deepest, frames = deepest_call(tmp_path, "net", shutil.which("cc"), flags)
            assert 0 < deepest <= program.stack_bytes, (weights, flags, deepest, program.stack_bytes, frames)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
@pytest.mark.parametrize("weights,levels", [("packed", [["-O0"], ["-O3", "-march=native", "-fopenmp"]]),
                                            ("tables", [["-O3", "-march=native", "-fopenmp"]]),
                                            ("lists", [["-O3", "-march=native", "-fopenmp"]])])
def test_strict_c99_without_multiplies_in_the_shift_kernels(resnet20, weights, levels, tmp_path):
    _, _, _, rt = resnet20
    program = sq.codegen(rt, tmp_path, "net", weights=weights)
    source = (tmp_path / "net.c").read_text()
    header = (tmp_path / "net.h").read_text()
    code = re.sub(r"/\*.*?\*/", "", source + header, flags=re.S)
    # the C library's two headers, the Arm compilers' intrinsics (SADD8) on cores with the DSP
    # extension, and x86's (VPSHUFB) on hosts with AVX2 (the channel lanes' form: test_c_lanes.py)
    assert set(re.findall(r"#include <(\w+\.h)>", code)) == {"stdint.h", "string.h", "arm_acle.h", "immintrin.h"}
    assert not re.search(r"\b(float|double|malloc|calloc|free)\b", code)  # integer-only, static
    assert f"#define NET_ARENA_BYTES ({program.arena_bytes})" in header and "int net_run(" in header
    assert program.flash_bytes > 0 and 0 < program.arena_bytes <= program.ram_bytes
    for flags in levels:
        assert_no_multiply_in_shift_kernels(rt, tmp_path, flags)


def assert_no_multiply_in_shift_kernels(rt, tmp_path, flags):
    """objdump of ``tmp_path/net.c`` compiled with ``flags``: one function per shift layer, and no
    multiply instruction in any of them or in the helpers they call for their weights."""
    shift_layers = sum(1 for n in rt.nodes if n["op"].startswith("shift_"))
    functions = kernels_of(compile_object(tmp_path, "net", flags))
    kernels = {f: ops for f, ops in functions.items() if "_shift_" in f}
    assert len({f.split(".")[0] for f in kernels}) == shift_layers, sorted(kernels)
    helpers = {f: ops for f, ops in functions.items() if f.startswith(("sq_group_codes_", "sq_code_sums_"))}
    found = {f: sorted({op for op in ops if MULTIPLY.match(op)}) for f, ops in {**kernels, **helpers}.items()}
    assert not any(found.values()), (flags, {f: ops for f, ops in found.items() if ops})


@pytest.mark.skipif(shutil.which("objdump") is None or platform.machine().lower() not in c_backend.X86,
                    reason="no objdump, or not an x86 host")
def test_the_host_library_zeroes_its_accumulators_without_rep_stos(resnet20):
    """The host library's shift layers, as the backend builds them (its flags, its compiler), zero
    their accumulators with stores, not with ``rep stos``, whose start-up cost more than the stores
    on AMD's Zen (GCC's tuning there chose it: :data:`.backend.GCC_X86`)."""
    _, _, _, rt = resnet20
    native = CRuntime(rt, threads=1, weights="tables")
    kernels = {f: ops for f, ops in kernels_of(native.library).items() if "_shift_" in f}
    assert len({f.split(".")[0] for f in kernels}) == sum(n["op"].startswith("shift_") for n in rt.nodes)
    assert not any("rep" in ops or "repz" in ops for ops in kernels.values()), \
        sorted(f for f, ops in kernels.items() if "rep" in ops)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
@pytest.mark.parametrize("name", ["resnet20", "plain"])
def test_power_of_two_weights_times_uniform_inputs_are_exact_and_multiplier_free(name, tmp_path):
    """Shift x integer: power-of-two weights, uniform unsigned 3-bit input codes (protocol v3's
    candidate). C == reference == PyTorch, atol 0, and no multiply in the shift kernels."""
    model, batches, px = quantized_pixels(name, 3, weight_shift_bits=2, act_shift_bits=None, act_uniform_bits=3)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / f"{name}.sqb", px.to_float(batches["calibration"][:1]), px)
    assert rt.manifest["exact"]
    assert_three_way(model, batches, px, rt, f"{name} uniform inputs")
    sq.codegen(rt, tmp_path, "net")
    assert_no_multiply_in_shift_kernels(rt, tmp_path, ["-O3", "-march=native"])


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
def test_the_multiply_check_sees_multiplies(tmp_path):
    """The detector of the test above flags integer, vector and float multiplies."""
    source = """
#include <stdint.h>
int32_t scalar(int32_t a, int32_t b) { return a * b; }
void vector(int16_t *restrict a, const int16_t *restrict b)
{ int i; for (i = 0; i < 64; i++) a[i] = (int16_t)(a[i] * b[i]); }
float real(float a, float b) { return a * b; }
"""
    (tmp_path / "probe.c").write_text(source)
    functions = kernels_of(compile_object(tmp_path, "probe", ["-O3", "-march=native"]))
    for name in ("scalar", "vector", "real"):
        assert any(MULTIPLY.match(op) for op in functions[name]), (name, functions[name])


@pytest.mark.parametrize("name,bits,acts", [("mlp", 1, False), ("mlp", 2, True), ("mlp", 3, True),
                                            ("plain", 1, True), ("plain", 2, False), ("plain", 3, True),
                                            ("cnn", 1, True), ("cnn", 2, False), ("cnn", 3, True),
                                            ("resnet20", 3, False)])
def test_c_equals_reference_and_pytorch_exactly(name, bits, acts, tmp_path):
    """Held-out and saturation-extreme pixels, not only the calibration batch; both weight formats
    (ResNet-20 the packed codes here, the tables below) and both border layouts."""
    model, batches, px, rt = hard_and_runtime(name, 1, bits, acts, tmp_path)
    forms = [("packed", "shared"), ("packed", "minimal")] + ([] if name == "resnet20" else [("tables", "shared")])
    for weights, borders in forms:
        native = assert_three_way(model, batches, px, rt, f"{name} s{bits} {'WA' if acts else 'W'} {weights} {borders}",
                                  weights, borders)
        if name == "mlp" and weights == "packed":  # one position a channel: its taps summed by code
            assert "sq_code_sums_" in emit(native.program)[1]


@pytest.mark.parametrize("weights", ["packed", "tables", "lists"])
def test_few_position_layers_three_ways(weights, tmp_path):
    """Layers with at most four output positions per channel, which packed weights sum by code (a
    depthwise one in every weights form):
    a 2x2 convolution of a 3x3 map (four positions, a window repeating per input channel), a 1x1
    convolution of the 2x2 map (four positions, one tap per input channel), a 2x2 convolution down
    to 1x1 and a depthwise 3x3 convolution of the 1x1 map (padded: one input channel, its window
    read as taps), a Linear. C == reference == PyTorch on every batch."""
    from torch import nn

    from tests.export.models import deploy_exported

    torch.manual_seed(5)
    block = lambda cin, cout, kernel, **kw: [nn.Conv2d(cin, cout, kernel, **kw), nn.BatchNorm2d(cout), nn.ReLU()]
    model = nn.Sequential(*block(1, 8, 3, padding=1), nn.MaxPool2d(3), *block(8, 16, 2), *block(16, 16, 1),
                          *block(16, 16, 2), *block(16, 16, 3, padding=1, groups=16),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    px = sq.PixelInput((0.5,), (0.25,), 255)
    rt, pixels, ref = deploy_exported(model, (8, 1, 9, 9), px, tmp_path / "m.sqb")
    native = CRuntime(rt, weights=weights)
    assert rt.manifest["integer_only"], rt.float_ops
    assert np.array_equal(native.run(pixels), ref) and np.array_equal(rt.run(pixels), ref)
    assert np.array_equal(native.run_int(pixels)[0], rt.run_int(pixels)[0])
    helpers = set(re.findall(r"sq_code_sums_\w+(?=\()", emit(native.program)[1]))
    kinds = {h.split("_", 5)[5] for h in helpers}  # the offsets' kind, and the positions where several
    # tables and lists: the depthwise layer alone (a grouped layer is summed by code in every form)
    assert kinds == ({"16x4", "sx4", "16", "s"} if weights == "packed" else {"16"}), helpers
    if weights == "packed" and shutil.which("objdump"):  # the 1x1 layer's taps a plane apart: no multiply for it
        sq.codegen(rt, tmp_path, "net")
        for flags in (["-O2"], ["-O3", "-march=native"]):
            assert_no_multiply_in_shift_kernels(rt, tmp_path, flags)


def test_few_positions_whose_offsets_leave_16_bits_take_the_general_form(tmp_path):
    """Four positions whose rows are 65,536 bytes apart in the input (a 1x1 convolution with a
    vertical stride of 32,768): their offsets do not fit the by-code form's 16-bit table, so the
    layer keeps the general form, and C == reference."""
    from torch import nn

    from tests.export.models import deploy_exported

    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 8, 1, stride=(32768, 1)), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10)).eval()
    px = sq.PixelInput((0.5,), (0.25,), 255)
    rt, pixels, _ = deploy_exported(model, (2, 1, 32769, 2), px, tmp_path / "m.sqb")
    for borders in ("shared", "minimal"):
        native = CRuntime(rt, weights="packed", borders=borders)
        assert np.array_equal(native.run_int(pixels)[0], rt.run_int(pixels)[0]), borders
        layers = [k for k in native.program.kernels if getattr(k, "in_step", 0) >= 1 << 16]
        assert layers, borders  # the case is there


def test_an_input_and_a_linear_layer_over_65535_wide_export_and_run_three_ways(tmp_path):
    """A 1x1x70,000 input and a flattened head of 70,000 features, W2A2: the input's shape and the
    head's weight shape pass the bundle's bounds (a dimension may hold up to 2^24 values, as a
    node may), and C == reference == PyTorch."""
    from torch import nn

    from tests.export.models import deploy_exported

    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(70000, 3)).eval()
    px = sq.PixelInput((0.5,), (0.25,), 255)
    rt, pixels, ref = deploy_exported(model, (2, 1, 1, 70000), px, tmp_path / "m.sqb", weight_shift_bits=2,
                                      act_shift_bits=2)  # at W3A3 its accumulator would pass float32's 2^24
    head = next(n for n in rt.manifest["nodes"] if n["op"] == "shift_linear")
    assert head["weight_shape"] == [3, 70000] and rt.manifest["nodes"][0]["shape"] == [1, 1, 70000]
    assert np.array_equal(rt.run(pixels), ref)
    assert np.array_equal(CRuntime(rt).run_int(pixels)[0], rt.run_int(pixels)[0])


def test_resnet20_and_resnet18_three_ways(resnet20, tmp_path):
    assert_three_way(*resnet20, "resnet20 s2 WA", "tables")
    native = assert_three_way(*hard_and_runtime("resnet18", 0, 1, True, tmp_path), "resnet18 s1 WA", "packed",
                              "minimal")
    assert native.program.flash_bytes < 0.3 * 4 * 11e6  # bit-packed: well under float32's 44 MB


def test_the_host_takes_offset_lists_beyond_the_tables_budget_and_packed_codes_beyond_that(resnet20, monkeypatch):
    """``lists`` weights: the grouped offsets of ``tables`` without its level tables (fewer bytes,
    the thresholds searched), C == reference == PyTorch; the host backend picks tables, then lists,
    then packed codes as each exceeds its budget (:data:`backend.HOST_FORMATS`)."""
    from shiftquant.export.c import lower

    model, batches, px, rt = resnet20
    forms = {w: lower(rt, weights=w) for w in ("tables", "lists", "packed")}
    sources = {w: emit(p)[1] for w, p in forms.items()}
    assert forms["packed"].flash_bytes < forms["lists"].flash_bytes < forms["tables"].flash_bytes
    level_table = r"_shift_\d+_lut\["  # a shift layer's level table (input stages keep their small ones)
    assert re.search(level_table, sources["tables"]) and not re.search(level_table, sources["lists"])
    assert all(re.search(r"_list\[", sources[w]) for w in ("tables", "lists")) and "sq_group_codes" in sources["packed"]
    assert_three_way(model, batches, px, rt, "resnet20 lists", "lists")
    pixels = np.concatenate(list(batches.values()))
    size = forms["lists"].flash_bytes
    for budget, chosen in ((size, "lists"), (size - 1, "packed")):
        monkeypatch.setattr(c_backend, "HOST_FORMATS", (("tables", size - 1), ("lists", budget), ("packed", None)))
        native = CRuntime(rt)
        assert native.program.weights == chosen
        assert np.array_equal(native.run_int(pixels)[0], rt.run_int(pixels)[0])


def test_trained_weights_three_ways(tmp_path):
    """Weights after QAT steps (eps going to 0) on the digits' own 0..16 pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, labels = digits.images.astype(np.uint8)[:, None], torch.from_numpy(digits.target)
    px = sq.PixelInput((0.3,), (0.4,), 16)
    for name in ("plain", "resnet20"):
        model, _ = build(name, 0)
        sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
        sq.calibrate(model, [px.to_float(pixels[:256])])
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(12):
            sq.set_slope(model, 1 - step / 11)
            idx = np.random.default_rng(step).integers(0, 1400, 32)
            loss = torch.nn.functional.cross_entropy(model(px.to_float(pixels[idx])), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        rt = sq.export(model, tmp_path / f"{name}.sqb", px.to_float(pixels[:1]), px)
        extremes = {k: v for k, v in pixel_batches((2, 1, 8, 8), 0, px).items() if k != "calibration"}
        assert_three_way(model, {"held_out": pixels[1400:1600], **extremes}, px, rt, f"trained {name}")


def test_one_image_and_threads_give_the_same_logits(resnet20):
    _, batches, _, rt = resnet20
    native = sq.load_bundle(rt.source, backend="c", threads=2)
    p = batches["held_out"]
    both = native.run(p)
    native.threads = 1
    assert np.array_equal(both, native.run(p))
    assert np.array_equal(np.concatenate([native.run(p[i:i + 1]) for i in range(len(p))]), both)


def test_the_library_is_built_once_and_cached(tmp_path, monkeypatch):
    _, _, _, rt = hard_and_runtime("mlp", 0, 2, True, tmp_path)
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    run = subprocess.run
    monkeypatch.setattr(c_backend.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or run(cmd, **kw))
    first = CRuntime(rt)
    builds = [c for c in calls if "-shared" in c]
    assert len(builds) == 1 and first.library.parent == tmp_path / "cache" / "c"
    second = CRuntime(rt)
    assert second.library == first.library and [c for c in calls if "-shared" in c] == builds
    assert sorted(p.name for p in (tmp_path / "cache" / "c").iterdir()) == sorted(
        [first.library.name, first.library.with_suffix(".sha256").name])  # the digest, no temporary left


def test_without_a_compiler_the_error_says_so(resnet20, monkeypatch):
    _, _, _, rt = resnet20
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(c_backend.shutil, "which", lambda name: None)
    with pytest.raises(CompilerNotFoundError, match="no C compiler.*backend='reference'"):
        sq.load_bundle(rt.source, backend="c")
    assert issubclass(CompilerNotFoundError, sq.ShiftQuantError)


def test_float_ops_are_refused_by_name(tmp_path):
    """Without the residual grid the CNN's residual add and the pooling after it compute in float32:
    the C backend names the first such node and says what to do."""
    model, batches, px = quantized_pixels("cnn", 0, "deploy", weight_shift_bits=2, act_shift_bits=2,
                                          residual_bits=None)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "float_add.sqb", px.to_float(batches["calibration"][:1]), px)
    assert "pool" in rt.float_ops and "add" in rt.float_ops
    with pytest.raises(CodegenError, match=r"node '\w+' \(\w+\) computes in float32: .+; how: .*residual_bits"):
        CRuntime(rt)
    with pytest.raises(sq.ConfigError, match="backend"):
        sq.load_bundle(rt.source, backend="gpu")
    with pytest.raises(sq.ConfigError, match="name"):
        sq.codegen(rt, tmp_path, "not a name")


def test_input_stages_reach_the_levels_the_reference_proves(resnet20):
    """A layer's thresholded input holds the levels its input can reach, as the reference's proof
    has them: after a ReLU none below 0, so unsigned bytes (runs of 31 taps, not 15)."""
    from shiftquant.export.c.lower import lower
    from shiftquant.export.c.program import Map, ShiftLayer, Split
    from shiftquant.export.ops.shift import _input_interval

    rt = resnet20[3]
    program = lower(rt, weights="packed", borders="minimal")
    staged = {k.output.name: k for k in program.kernels if isinstance(k, Map)}
    staged.update({k.output.name: k for k in program.kernels if isinstance(k, Split) and k.thresholds is not None})
    checked = 0
    for k in program.kernels:
        node = next(n for n in rt.manifest["nodes"] if n["name"] == k.node)
        if not isinstance(k, ShiftLayer) or node.get("input_thresholds") is None:
            continue
        a = k.inputs[0]
        assert a.name in staged or a.name.endswith(".in"), a.name
        assert (a.lo, a.hi) == _input_interval(rt, node, rt.facts[node["inputs"][0]]), k.node
        checked += 1
    unsigned = [k for k in program.kernels if isinstance(k, ShiftLayer) and k.inputs[0].lo == 0]
    layers = [k for k in program.kernels if isinstance(k, ShiftLayer)]
    assert checked >= 12  # every layer but the first (pixels through signed levels) reads unsigned bytes
    assert unsigned == layers[1:] and all(k.narrow_run == 31 for k in unsigned)


def test_the_vector_block_is_a_power_of_two_and_the_host_takes_the_wider_one(resnet20):
    from shiftquant.export.c.lower import lower
    from shiftquant.export.c.program import CHUNK, HOST_CHUNK, ShiftLayer

    rt = resnet20[3]
    for bad in (100, 2, 2048, True, "64"):
        with pytest.raises(sq.ConfigError, match="chunk=.*a power of two from 4"):
            lower(rt, chunk=bad)
    host = CRuntime(rt).program
    assert host.chunk == HOST_CHUNK > CHUNK == lower(rt).chunk
    assert max(k.chunk for k in host.kernels if isinstance(k, ShiftLayer)) == HOST_CHUNK


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_phase_splits_whose_rows_span_several_blocks_are_strict_and_exact(resnet20, tmp_path, monkeypatch):
    """ResNet-20's stride-2 splits on blocks of 4 lanes: a row spans several blocks, so each phase
    takes its columns block by block instead of as one contiguous run (the blocks of the default
    chunks hold a whole row of this model). That form compiles with the strict flags
    too, and the host runs it bit for bit."""
    from shiftquant.export.c.lower import lower
    from shiftquant.export.c.program import Split

    _, batches, _, rt = resnet20
    program = lower(rt, "net", "packed", "shared", 4)
    splits = [k for k in program.kernels if isinstance(k, Split)]
    assert splits and all(k.inputs[0].shape[2] > 4 for k in splits)
    header, source = emit(program)
    assert "net_phases" in source and "_from[p]; x <" not in source  # no one-block rows here
    (tmp_path / "net.h").write_text(header)
    (tmp_path / "net.c").write_text(source)
    compile_object(tmp_path, "net", ["-O2"])
    monkeypatch.setattr(c_backend, "HOST_CHUNK", 4)
    native = CRuntime(rt, threads=1, weights="packed")
    assert native.program.chunk == 4
    pixels = np.concatenate(list(batches.values()))
    assert np.array_equal(native.run_int(pixels)[0], rt.run_int(pixels)[0])


def test_cli_codegen_summary_and_run_with_the_c_backend(tmp_path, capsys):
    from shiftquant.cli import main

    _, _, _, rt = hard_and_runtime("plain", 0, 2, True, tmp_path)
    assert main(["codegen", rt.source, str(tmp_path / "out"), "--name", "digits_net"]) == 0
    assert (tmp_path / "out" / "digits_net.c").exists() and (tmp_path / "out" / "digits_net.h").exists()
    assert "int digits_net_run(const uint8_t *input, int32_t *output)" in capsys.readouterr().out
    assert main(["summary", rt.source]) == 0
    summary = capsys.readouterr().out
    assert "C code (shiftquant codegen): flash" in summary and " with lists)" in summary
    # a microcontroller project keeps the packed codes: another form is refused, naming the field, nothing written
    assert main(["codegen", rt.source, str(tmp_path / "mcu"), "--weights", "lists", "--target", "cortex-m4"]) != 0
    assert "--weights='lists' is invalid: allowed packed with --target cortex-m4" in capsys.readouterr().err
    assert not (tmp_path / "mcu").exists()
    runs = []
    for backend in ("reference", "c"):
        assert main(["run", rt.source, "--data", "digits", "--limit", "200", "--backend", backend]) == 0
        runs.append(capsys.readouterr().out.split("top-1 ")[1].split(" on")[0])
    assert runs[0] == runs[1]  # the same predictions, so the same accuracy


def test_a_bundle_without_pixels_takes_the_first_layers_input_integers(tmp_path):
    """Float input: the host quantizes it with the reference runtime's quantizer, the C does the rest."""
    from tests.export.models import quantized

    model, x = quantized("plain", 0, weight_shift_bits=2, act_shift_bits=2)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "floats.sqb", x)
    native = CRuntime(rt)
    assert native.program.input_kind == "codes" and rt.float_ops  # the first layer's input quantizer
    xs = torch.cat([x, 4 * torch.randn(4, *x.shape[1:]), torch.full((1, *x.shape[1:]), 1e3),
                    torch.full((1, *x.shape[1:]), -1e3)])
    with torch.no_grad():
        ref = model(xs).numpy()
    assert np.array_equal(native.run(xs.numpy()), ref) and np.array_equal(rt.run(xs.numpy()), ref)


def test_delta_packed_thresholds_decode_to_the_table(resnet20):
    """The requantization thresholds onto the 8-bit residual grid, stored as first value, smallest
    step and packed excesses, decode to the clamped table the tables form stores; values a packing
    cannot hold (beyond 2^30, or steps 2^8 apart) keep the table."""
    from shiftquant.export.c import lower
    from shiftquant.export.c.program import ShiftLayer, pack_deltas, unpack_deltas

    _, _, _, rt = resnet20
    packed, tables = lower(rt, weights="packed"), lower(rt, weights="tables")
    layers = [k for k in packed.kernels if isinstance(k, ShiftLayer) and k.requant is not None]
    deltas = [k.requant for k in layers if k.requant.deltas is not None]
    assert deltas and all(np.array_equal(unpack_deltas(r.deltas), r.table) for r in deltas)
    assert any(r.deltas.den is not None for r in deltas)  # a BatchNorm onto the residual grid: lines
    # nearly equal steps (a BatchNorm, then a uniform grid): a quarter of int16 tables or less
    assert 4 * sum(r.deltas.nbytes for r in deltas) < sum(2 * r.table.size for r in deltas)
    rng = np.random.default_rng(0)
    raw = np.cumsum(rng.integers(0, 300, (3, 40)), axis=1) - 5000
    assert np.array_equal(unpack_deltas(pack_deltas(raw[:, :10] // 2, -100, 100)), np.clip(raw[:, :10] // 2, -100, 100))
    assert pack_deltas(raw, -10**6, 10**6) is None  # excesses of 9 bits
    assert pack_deltas(raw + (1 << 30), 0, 1) is None
    assert tables.flash_bytes > packed.flash_bytes
    # levels the accumulator cannot reach put thresholds at the search's ends: counted, not packed
    line = (np.arange(200) * 7) // 3 - 100
    ends = np.stack([np.concatenate([[-400] * 30, line[:170]]), np.concatenate([line[25:], [401] * 25]),
                     np.concatenate([[-400] * 20, line[:150], [401] * 30])])
    pack = pack_deltas(ends, -400, 401)  # on the line 7j / 3: three small integers a channel, no excess bits
    assert list(pack.start) == [30, 0, 20] and list(pack.end) == [200, 175, 170]
    assert pack.bits == 0 and list(pack.den) == [3, 3, 3] and list(pack.step) == [2, 2, 2] and list(pack.frac) == [1] * 3
    assert np.array_equal(unpack_deltas(pack), ends)
    ends[1, 100] += 1  # one threshold off the line (a float rounding): the excess form, a bit a step
    pack = pack_deltas(ends, -400, 401)
    assert pack.den is None and pack.bits == 1 and np.array_equal(unpack_deltas(pack), ends)
    dip = line[None, :63].copy()
    dip[0, 20] = dip[0, 22] + 1  # not non-decreasing: packed whole, as before
    pack = pack_deltas(dip, -400, 401)
    assert (pack.start, pack.end) == ([0], [63]) and np.array_equal(unpack_deltas(pack), dip)


def _lives(program):
    """Each arena buffer's byte range and the kernel steps it is alive over."""
    from shiftquant.export.c.program import ALIGN

    spans: dict[int, list] = {}
    for i, k in enumerate(program.kernels):
        for t in [*k.inputs, k.output]:
            r = t.root
            if r.offset < 0 or r.constant is not None or r is program.input:
                continue
            s = spans.setdefault(id(r), [r, i, i])
            s[1], s[2] = min(s[1], i), max(s[2], i)
    return [(r.offset, r.offset + -(-r.nbytes // ALIGN) * ALIGN, a, b) for r, a, b in spans.values()]


@pytest.mark.parametrize("name,borders", [("resnet20", "shared"), ("resnet8", "shared"), ("resnet8", "minimal")])
def test_the_arena_shares_only_what_is_dead_and_writes_elementwise_outputs_over_dying_inputs(name, borders, resnet20,
                                                                                            tmp_path):
    """No two buffers alive at one kernel overlap, except an elementwise kernel's output over the
    input that dies there (exactly over it); a ReLU after a residual add is fused into the add,
    so the wider sum is never stored; the arena is within 1 % of the largest set of buffers alive at once."""
    from shiftquant.export.c import lower
    from shiftquant.export.c.program import Add, Unary

    rt = resnet20[3] if name == "resnet20" else hard_and_runtime(name, 0, 2, True, tmp_path)[3]
    program = lower(rt, borders=borders)
    k_of = {id(k.output.root): (i, k) for i, k in enumerate(program.kernels)}
    lives = _lives(program)
    for i, (o1, e1, a1, b1) in enumerate(lives):
        for o2, e2, a2, b2 in lives[i + 1:]:
            if max(a1, a2) > min(b1, b2) or e1 <= o2 or e2 <= o1:
                continue  # alive at different kernels, or apart in memory
            # overlapping while both are alive: only an in-place kernel at the handoff
            step = max(a1, a2)
            assert min(b1, b2) == step and program.kernels[step].in_place and o1 == o2, (name, o1, o2, step)
    assert any(k.in_place for k in program.kernels)
    adds = [k for k in program.kernels if isinstance(k, Add)]
    assert adds and all(k.expr != "x" for k in adds)  # ReLU fused: no add's sum is stored
    assert not any(isinstance(k, Unary) and isinstance(k_of.get(id(k.inputs[0].root), (0, None))[1], Add)
                   for k in program.kernels)
    steps = range(len(program.kernels))
    busiest = max(sum(e - o for o, e in {(o, e) for o, e, a, b in lives if a <= s <= b}) for s in steps)
    assert busiest <= program.arena_bytes <= 1.01 * busiest, (program.arena_bytes, busiest)


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
def test_minimal_borders_and_fused_input_stages_shrink_the_arena(name, resnet20, tmp_path):
    """A stride-2 convolution's phase split thresholds its input itself (no Map stores the
    thresholded image); with minimal borders only what a padded convolution reads has a border,
    and the arena is smaller than with shared borders."""
    from shiftquant.export.c import lower
    from shiftquant.export.c.program import Map, ShiftLayer, Split

    rt = resnet20[3] if name == "resnet20" else hard_and_runtime(name, 0, 2, True, tmp_path)[3]
    shared, minimal = lower(rt), lower(rt, borders="minimal")
    splits = [k for k in minimal.kernels if isinstance(k, Split)]
    assert splits and all(k.thresholds is not None for k in splits)
    assert not any(isinstance(k, Map) and any(s.inputs[0] is k.output for s in splits) for k in minimal.kernels)
    for t in minimal.tensors:
        if t.border:
            assert any(isinstance(k, ShiftLayer) and k.inputs[0].root is t.root and max(k.padding) >= t.border
                       for k in minimal.kernels), t.name
    assert any(t.border == 0 and t.shape[1] > 1 for t in minimal.tensors)
    assert minimal.arena_bytes < shared.arena_bytes, (minimal.arena_bytes, shared.arena_bytes)


def test_thresholds_off_a_line_decode_with_their_excess_bits_in_c(resnet20, monkeypatch):
    """Where no line fits a channel's thresholds (here: none searched), the excess form is
    decoded by the C: the same logits, bit for bit."""
    from shiftquant.export.c import program as c_program

    model, batches, px, rt = resnet20
    monkeypatch.setattr(c_program, "LINE_DENOMINATORS", 0)
    native = assert_three_way(model, batches, px, rt, "resnet20 excess form", "packed", "minimal")
    packs = [k.requant.deltas for k in native.program.kernels
             if isinstance(k, c_program.ShiftLayer) and k.requant is not None and k.requant.deltas is not None]
    assert packs and all(p.den is None for p in packs) and any(p.bits for p in packs)
