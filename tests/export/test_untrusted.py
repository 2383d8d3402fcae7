"""Untrusted bundles: nothing from a bundle becomes code, shapes and ranges are proven at load for
every backend, and a fuzzer with a recomputed checksum finds no signal, no foreign exception and no
silent difference between the reference runtime and the C backend (whose C also runs clean under
AddressSanitizer and UndefinedBehaviorSanitizer)."""
import hashlib
import random
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError, ConfigError
from shiftquant.export.c import CRuntime, codegen, emit
from shiftquant.export.format.bundle import pack_codes, read_bundle, unpack_codes, write_bundle
from tests.export.isolation import run_forked
from tests.export.models import quantized_pixels
from tests.export.mutations import PAYLOADS, mutate, rename
from tests.export.test_codegen import STRICT

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

REFERENCE_MUTATIONS = 2000
C_MUTATIONS = 300
SANITIZE = ["-std=c99", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path_factory.mktemp("c-cache")))
        yield


def _pixel_bundle(name, directory, **recipe):
    """An integer-only bundle (uint8 pixels in, integer logits out) and pixels to run it on."""
    model, batches, px = quantized_pixels(name, 0, act_shift_bits=2, **recipe)
    p = np.concatenate([batches["calibration"], batches["zeros"], batches["saturated"]])
    rt = sq.export(model, directory / f"{name}.sqb", px.to_float(p[:1]), px)
    assert rt.manifest["integer_only"], rt.float_ops
    return directory / f"{name}.sqb", p


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("untrusted")
    return {"mlp": _pixel_bundle("mlp", d), "plain": _pixel_bundle("plain", d)}


class LeNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> max pool -> conv -> ReLU -> max pool -> Linear: no test names it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 12, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(12 * 3 * 3, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    torch.manual_seed(3)
    model, x = LeNet().eval(), torch.randn(4, 1, 16, 16)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", act_shift_bits=2))
    sq.calibrate(model, [x])
    path = tmp_path_factory.mktemp("lenet") / "lenet.sqb"
    sq.export(model, path, x)
    return path, x.numpy()


# ------------------------------------------------------------------------------------------ C text
def _defined_symbols(objfile) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", str(objfile)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _sections(objfile) -> set[str]:
    out = subprocess.run(["objdump", "-h", str(objfile)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s*\d+\s+(\S+)", out, re.M))


GENERATED = re.compile(r"^(net_(invoke|run|arena|(shift|in|relu|add|maxpool|sum|winsum|phases|move|planes|tokens|codes|bt"
                       r"|matmul|shiftmax|layernorm|const)_\d+(_[a-z]+)*)|sq_(clear_border|pot_code|bits|isqrt|floor_div|group_codes_\d|code_sums_\d+_u?int\d+_(s|\d+)(x\d)?)"
                       r"|\.L\w+)(\.\w+)*$")  # .L*: the compiler's local constants


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("objdump") is None, reason="no binutils")
@pytest.mark.parametrize("base", ["mlp", "plain"])
def test_string_payloads_never_reach_c_as_code(bundles, base, tmp_path):
    path, p = bundles[base]
    marker = tmp_path / "MARKER"
    manifest, tensors = read_bundle(path)
    expected = sq.load_bundle(path).run(p)
    printable = [s for s in PAYLOADS if s.isprintable() and s and len(s) < 200]
    for i, node in enumerate(list(manifest["nodes"])):  # every string field of every node a payload
        payload = printable[i % len(printable)].replace("MARKER", str(marker)) + f" #{i}"
        node["module"] = payload
        for key, value in list(node.items()):
            if isinstance(value, str) and value in tensors:
                tensors[payload + key] = tensors.pop(value)
                node[key] = payload + key
        rename(manifest, node["name"], payload)
    write_bundle(tmp_path / "evil.sqb", manifest, tensors)
    # The reference and the C backend load and run it, with the same logits as before the renaming.
    assert np.array_equal(sq.load_bundle(tmp_path / "evil.sqb").run(p), expected)
    assert np.array_equal(sq.load_bundle(tmp_path / "evil.sqb", backend="c").run(p), expected)
    # The generated files compile strictly; the object defines only the generator's symbols and has
    # no constructor or destructor sections.
    codegen(tmp_path / "evil.sqb", tmp_path / "out", name="net")
    source = (tmp_path / "out" / "net.c").read_text()
    assert "sq_evil" not in source and "#include \"/etc" not in source and "*/ " not in source.replace("*/\n", "")
    done = subprocess.run(["cc", *STRICT, "-O2", "-c", "net.c", "-o", "net.o"], cwd=tmp_path / "out",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    symbols = _defined_symbols(tmp_path / "out" / "net.o")
    assert symbols and all(GENERATED.match(s) for s in symbols), sorted(s for s in symbols if not GENERATED.match(s))
    assert not _sections(tmp_path / "out" / "net.o") & {".init_array", ".fini_array", ".ctors", ".dtors", ".init"}
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["line\nbreak", "\x1b[2Jclear", "right\u202eleft", "", "x" * 300])
@pytest.mark.parametrize("field", ["name", "module"])
def test_names_that_are_not_printable_text_are_refused_at_load(bundles, payload, field, tmp_path, capsys):
    from shiftquant.cli import main

    manifest, tensors = read_bundle(bundles["mlp"][0])
    if field == "name":
        rename(manifest, manifest["nodes"][1]["name"], payload)
    else:
        manifest["nodes"][1]["module"] = payload
    write_bundle(tmp_path / "m.sqb", manifest, tensors)
    with pytest.raises(BundleError, match="malformed name" if field == "name" else "module must be"):
        sq.load_bundle(tmp_path / "m.sqb")
    assert main(["summary", str(tmp_path / "m.sqb")]) != 0  # the summary refuses it too, printing no escape
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\u202e" not in out.out + out.err


def test_float_ops_of_the_wrong_type_are_refused_by_name(bundles, tmp_path):
    manifest, tensors = read_bundle(bundles["mlp"][0])
    for value in (5, "x", {"a": 1}, [1]):
        write_bundle(tmp_path / "m.sqb", {**manifest, "float_ops": value}, tensors)
        with pytest.raises(BundleError, match="float_ops must list distinct node names"):
            sq.load_bundle(tmp_path / "m.sqb")


def test_the_generated_names_come_from_the_generator_and_clash_with_nothing(bundles, tmp_path):
    path, p = bundles["mlp"]
    for bad in ("_STDINT", "__x", "1net", "net-1", "a" * 64, "", "net\n"):
        with pytest.raises(ConfigError, match="name"):
            codegen(path, tmp_path / "bad", name=bad)
    assert not (tmp_path / "bad").exists()
    codegen(path, tmp_path / "out", name="STDINT")  # its header guard is SHIFTQUANT_STDINT_H, not libc's
    (tmp_path / "out" / "main.c").write_text('#include <stdint.h>\n#include "STDINT.h"\n'
                                              "int main(void) { int32_t out[STDINT_OUTPUT_SIZE]; "
                                              "static STDINT_input_t in[STDINT_INPUT_SIZE]; return STDINT_run(in, out); }\n")
    done = subprocess.run(["cc", *STRICT, "main.c", "STDINT.c", "-o", "main"], cwd=tmp_path / "out",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ shapes and ranges
def test_a_pool_window_larger_than_its_input_is_refused_at_load_by_every_backend(lenet, tmp_path):
    path, x = lenet
    manifest, tensors = read_bundle(path)
    pool = [n for n in manifest["nodes"] if n["op"] == "max_pool2d"][-1]
    pool["kernel_size"] = [9, 9]
    write_bundle(tmp_path / "big.sqb", manifest, tensors)
    for backend in ("reference", "c"):
        with pytest.raises(BundleError, match=f"{re.escape(pool['name'])}.*shapes do not fit"):
            sq.load_bundle(tmp_path / "big.sqb", backend=backend)


def test_a_linear_layer_reading_more_features_than_its_weights_is_refused(bundles, tmp_path):
    manifest, tensors = read_bundle(bundles["mlp"][0])
    layer = next(n for n in manifest["nodes"] if n["op"] == "shift_linear")
    cout, cin = layer["weight_shape"]
    bits = layer["weight_quantizer"]["code_bits"]
    codes = unpack_codes(tensors[layer["weight_codes"]], bits, cout * cin).reshape(cout, cin)
    layer["weight_shape"] = [cout, cin - 1]  # weights that decode, for one feature fewer than it reads
    tensors[layer["weight_codes"]] = pack_codes(codes[:, :-1], bits)
    write_bundle(tmp_path / "narrow.sqb", manifest, tensors)
    with pytest.raises(BundleError, match=f"{layer['name']}.*does not have the {cin - 1} features"):
        sq.load_bundle(tmp_path / "narrow.sqb")


@pytest.mark.parametrize("lie", ["range", "dtype", "accumulator_bound", "int_output_bias"])
def test_c_backend_refuses_at_load_what_the_reference_refuses(bundles, lie, tmp_path):
    manifest, tensors = read_bundle(bundles["plain"][0])
    layers = [n for n in manifest["nodes"] if n["op"].startswith("shift_")]
    if lie == "range":
        node = next(n for n in layers if n.get("requant"))
        node["range"] = [node["range"][0], node["range"][1] - 1]
    elif lie == "dtype":
        node = next(n for n in manifest["nodes"] if n["op"] == "input")
        node["dtype"] = "float32"
    elif lie == "accumulator_bound":
        node = layers[1]
        node["accumulator_bound"] //= 3
    else:  # logits beyond their declared range
        node = layers[-1]
        tensors[node["int_output"]["bias"]] = tensors[node["int_output"]["bias"]].astype(np.int64) + (1 << 20)
    write_bundle(tmp_path / "lie.sqb", manifest, tensors)
    messages = []
    for backend in ("reference", "c"):
        with pytest.raises(BundleError, match=re.escape(repr(node["name"]))) as err:
            sq.load_bundle(tmp_path / "lie.sqb", backend=backend)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("bits", [9, 10, 12, 16])
def test_packed_codes_of_every_width_the_format_allows_decode_in_c(bundles, bits, tmp_path):
    path, p = bundles["plain"]
    manifest, tensors = read_bundle(path)
    expected = sq.load_bundle(path).run(p)
    for node in manifest["nodes"]:
        if node["op"].startswith("shift_"):
            spec, count = node["weight_quantizer"], int(np.prod(node["weight_shape"]))
            codes = unpack_codes(tensors[node["weight_codes"]], spec["code_bits"], count)
            spec["code_bits"] = bits
            tensors[node["weight_codes"]] = pack_codes(codes, bits)
    write_bundle(tmp_path / "wide.sqb", manifest, tensors)
    rt = sq.load_bundle(tmp_path / "wide.sqb")
    assert np.array_equal(rt.run(p), expected)
    assert np.array_equal(CRuntime(rt, weights="packed").run(p), expected)
    manifest["nodes"][1]["weight_quantizer"]["code_bits"] = 17
    write_bundle(tmp_path / "too_wide.sqb", manifest, tensors)
    with pytest.raises(BundleError, match="code_bits must be 1 to 16"):
        sq.load_bundle(tmp_path / "too_wide.sqb")


# ------------------------------------------------------------------------------------------ fuzzing
def _load_and_run(path, x):
    return sq.load_bundle(path).run(x)


def _mutants(base_path, count, seed, directory):
    """``count`` resealed mutants of a bundle (mutations that cannot even be written are skipped)."""
    manifest, tensors = read_bundle(base_path)
    rng = random.Random(seed)
    made = 0
    while made < count:
        m, t, what = mutate(manifest, tensors, rng)
        path = directory / f"m{made}.sqb"
        try:
            write_bundle(path, m, t)
        except (TypeError, ValueError, OverflowError, BundleError):
            continue  # not writable as a bundle (e.g. a key that is not a string): nothing to load
        made += 1
        yield path, what


def _check(outcome, what, tally):
    kind = outcome[0]
    tally[kind] += 1
    assert kind in ("ok", "refused"), f"{what}: {outcome}"
    if kind == "refused":
        assert outcome[1] == "BundleError", f"{what}: {outcome}"


def test_reference_fuzz_no_signal_no_foreign_exception(bundles, lenet, tmp_path):
    tally = Counter()
    bases = [(bundles["mlp"][0], bundles["mlp"][1][:3]), (lenet[0], lenet[1][:3]),
             (bundles["plain"][0], bundles["plain"][1][:3])]
    per_base = -(-REFERENCE_MUTATIONS // len(bases))
    for i, (base, x) in enumerate(bases):
        for path, what in _mutants(base, per_base, seed=10 + i, directory=tmp_path):
            _check(run_forked(_load_and_run, path, x, timeout=60), what, tally)
    print(dict(tally))
    assert sum(tally.values()) >= REFERENCE_MUTATIONS
    assert tally["refused"] >= REFERENCE_MUTATIONS // 3 and tally["ok"] >= 50  # both paths exercised


_HARNESS = """\
#include <stdio.h>
#include <stdlib.h>
#include "net.h"
/* n inputs from argv[1] -> n outputs to argv[2]: heap buffers of exactly the stated sizes; the arena
   filled with the little-endian word argv[4] where given. */
int main(int argc, char **argv)
{
    int i, n = argc > 3 ? atoi(argv[3]) : 0;
    FILE *f = fopen(argv[1], "rb");
    net_input_t *in = malloc(sizeof(net_input_t) * NET_INPUT_SIZE * n);
    int32_t *out = malloc(sizeof(int32_t) * NET_OUTPUT_SIZE * n);
    void *arena = malloc(NET_ARENA_BYTES);
    size_t j;
    if (argc < 4 || argc > 5 || !f || !in || !out || !arena) return 2;
    for (j = 0; argc == 5 && j < NET_ARENA_BYTES; j++)
        ((unsigned char *)arena)[j] = (unsigned char)(strtoul(argv[4], NULL, 0) >> (8u * (j & 3u)));
    if (fread(in, sizeof(net_input_t) * NET_INPUT_SIZE, n, f) != (size_t)n) return 3;
    fclose(f);
    for (i = 0; i < n; i++) net_invoke(in + (size_t)i * NET_INPUT_SIZE, out + (size_t)i * NET_OUTPUT_SIZE, arena);
    f = fopen(argv[2], "wb");
    fwrite(out, sizeof(int32_t) * NET_OUTPUT_SIZE, n, f);
    fclose(f);
    free(in); free(out); free(arena);
    return 0;
}
"""


def _c_run(path, x, workdir, sanitized: set, fill: str | None = None, weights: str | None = None):
    """The C backend's logits, and for C not yet seen, the same C under the sanitizers (the arena
    filled with the word ``fill`` where given; ``weights`` as :class:`CRuntime` takes it): its
    outputs must equal the library's, with no report."""
    rt = sq.load_bundle(path)
    native = CRuntime(rt, threads=1, name="net", weights=weights)
    out = native.run(x)
    header, source = emit(native.program)
    digest = hashlib.sha256((header + source).encode()).hexdigest()
    if digest in sanitized:
        return out, digest, "seen"
    d = workdir / digest[:16]
    d.mkdir(exist_ok=True)
    (d / "net.h").write_text(header)
    (d / "net.c").write_text(source)
    (d / "main.c").write_text(_HARNESS)
    inputs = native.inputs(x)
    inputs.tofile(d / "in.bin")
    done = subprocess.run(["cc", *SANITIZE, "net.c", "main.c", "-o", "main"], cwd=d, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = subprocess.run(["./main", "in.bin", "out.bin", str(len(inputs)), *([fill] if fill else [])], cwd=d, capture_output=True, text=True,
                         env={"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0 and not run.stderr, run.stderr[-3000:]
    ints = np.fromfile(d / "out.bin", dtype=np.int32).reshape(native.execute(x).shape)
    assert np.array_equal(ints, native.execute(x)), "sanitized build differs from the library"
    return out, digest, "sanitized"


@pytest.mark.parametrize("name", ["cnn", "plain"])
def test_lanes_past_a_blocks_values_run_clean_under_sanitizers(name, tmp_path):
    """A layer sums whole blocks of lanes; those past its values sum whatever the arena holds. With
    every arena word INT32_MIN, 32-bit accumulators (W2A4) and channels compared negated, negating
    such a lane overflowed int32 (a UBSan report) before the negation went unsigned."""
    model, batches, px = quantized_pixels(name, 0, weight_shift_bits=2, act_shift_bits=4)
    p = batches["calibration"][:3]
    rt = sq.export(model, tmp_path / f"{name}.sqb", px.to_float(p[:1]), px)
    native = CRuntime(rt, threads=1, name="net")
    source = emit(native.program)[1]
    assert re.search(r"uint32_t acc\[\d+\]", source) and "_neg[co >> 3]" in source  # the case, not another
    _, _, how = _c_run(tmp_path / f"{name}.sqb", p, tmp_path, set(), fill="0x80000000")
    assert how == "sanitized"


@pytest.mark.parametrize("name, bits", [("cnn", 3), ("plain", 2), ("resnet20", 2)])
def test_packed_weights_run_clean_under_sanitizers(name, bits, tmp_path):
    """Packed weights: each channel's codes read a 32-bit window at a time, whole windows then the
    last few codes; no read past the codes (reading a window after the last code overflowed the
    array, an ASan report) and the same outputs as the library."""
    model, batches, px = quantized_pixels(name, 0, weight_shift_bits=bits, act_shift_bits=2)
    p = batches["calibration"][:2]
    rt = sq.export(model, tmp_path / f"{name}.sqb", px.to_float(p[:1]), px)
    assert "sq_group_codes_" in emit(CRuntime(rt, threads=1, name="net", weights="packed").program)[1]
    assert _c_run(tmp_path / f"{name}.sqb", p, tmp_path, set(), weights="packed")[2] == "sanitized"


def test_c_fuzz_refuses_or_agrees_with_the_reference_and_runs_clean_under_sanitizers(bundles, tmp_path):
    tally, sanitized = Counter(), set()
    per_base = C_MUTATIONS // 2
    for i, name in enumerate(("mlp", "plain")):
        base, p = bundles[name]
        x = p[:3]
        for path, what in _mutants(base, per_base, seed=100 + i, directory=tmp_path):
            ref = run_forked(_load_and_run, path, x, timeout=60)
            _check(ref, what, Counter())
            c = run_forked(_c_run, path, x, tmp_path, sanitized, timeout=300)
            assert c[0] in ("ok", "refused"), f"{what}: C backend {c}"
            if c[0] == "refused":
                assert c[1] in ("BundleError", "CodegenError"), f"{what}: {c}"
                tally["both refuse" if ref[0] == "refused" else "C refuses by name"] += 1
                continue
            assert ref[0] == "ok", f"{what}: the C backend ran a bundle the reference refuses: {ref}"
            out, digest, how = c[1]
            assert np.array_equal(out, ref[1]), f"{what}: C and reference differ"
            sanitized.add(digest)
            tally["same logits"] += 1
            tally[how] += 1
    print(dict(tally))
    assert sum(tally[k] for k in ("both refuse", "C refuses by name", "same logits")) == 2 * per_base
    assert tally["same logits"] >= 20 and tally["sanitized"] >= 5


# ------------------------------------------------------------------------------------------ a reviewer's attacks
@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return _pixel_bundle("resnet20", tmp_path_factory.mktemp("r20"))


def _both_refuse(path, match):
    for backend in ("reference", "c"):
        with pytest.raises(BundleError, match=match):
            sq.load_bundle(path, backend=backend)


def test_input_quantizer_levels_must_be_the_ones_it_produces(tmp_path):
    from tests.export.models import quantized

    model, x = quantized("mlp", 0, act_shift_bits=2)
    sq.export(model, tmp_path / "f.sqb", x)  # float input: the first layer quantizes in float
    manifest, tensors = read_bundle(tmp_path / "f.sqb")
    layer = next(n for n in manifest["nodes"] if n["op"].startswith("shift_"))
    q = layer["input_quantizer"]["quantizer"]
    small = [v for v in q["levels"] if abs(v) <= q["resolution"]]
    for edit, match in (({"levels": small}, "levels are not the levels it produces"),
                        ({"bits": 30}, "bits must be 0 to")):
        layer["input_quantizer"]["quantizer"] = {**q, **edit}
        write_bundle(tmp_path / "lie.sqb", manifest, tensors)
        _both_refuse(tmp_path / "lie.sqb", match)


def _insert_before_global_pool(manifest, node, out_hw):
    nodes = manifest["nodes"]
    i = next(i for i, n in enumerate(nodes) if n["op"] == "adaptive_avg_pool2d")
    pool = nodes[i]
    node["inputs"] = list(pool["inputs"])
    pool["inputs"] = [node["name"]]
    pool["input_shape"] = [pool["input_shape"][0], *out_hw]
    nodes.insert(i, node)
    return pool


def test_an_integer_max_pool_window_of_padding_only_is_refused(resnet, tmp_path):
    manifest, tensors = read_bundle(resnet[0])
    pool = next(n for n in manifest["nodes"] if n["op"] == "adaptive_avg_pool2d")
    h = pool["input_shape"][1]
    source = next(n for n in manifest["nodes"] if n["name"] == pool["inputs"][0])
    mp = {"name": "mp", "op": "max_pool2d", "kernel_size": [2, 1], "stride": [1, 1], "padding": [1, 0],
          "dilation": [h + 1, 1], "ceil_mode": False, "dtype": source["dtype"], "range": source["range"]}
    _insert_before_global_pool(manifest, mp, [1, pool["input_shape"][2]])  # H + 2 - (H + 1) = 1 window
    write_bundle(tmp_path / "pad.sqb", manifest, tensors)
    _both_refuse(tmp_path / "pad.sqb", "a pooling window lies entirely in the padding")


def test_add_shifts_beyond_30_are_refused(resnet, tmp_path):
    manifest, tensors = read_bundle(resnet[0])
    add = next(n for n in manifest["nodes"] if n["op"] == "add" and n.get("shifts") is not None)
    add["shifts"] = [40, 0]
    write_bundle(tmp_path / "shift.sqb", manifest, tensors)
    _both_refuse(tmp_path / "shift.sqb", "shifts must be 0 to 30")


def test_integer_fields_beyond_their_bounds_are_refused_naming_the_range(bundles, tmp_path):
    for edit, match in ((lambda conv, linear, first: conv.update(stride=[70000, 1]),
                         "stride must be 2 integers from 1 to 65535"),
                        (lambda conv, linear, first: linear.update(weight_shape=[linear["weight_shape"][0],
                                                                                 (1 << 24) + 1]),
                         "weight_shape must be 2 integers from 1 to 16777216"),
                        (lambda conv, linear, first: first.update(shape=[1] * 9),
                         "shape must be a list of 1 to 8 integers from 1 to 16777216"),
                        (lambda conv, linear, first: conv.update(weight_shape=[conv["weight_shape"][0], 1, 1, 1 << 24]),
                         "node '{}'.*weight_codes: packed codes: expected")):
        manifest, tensors = read_bundle(bundles["plain"][0])
        conv = next(n for n in manifest["nodes"] if n["op"] == "shift_conv2d")
        args = (conv, next(n for n in manifest["nodes"] if n["op"] == "shift_linear"), manifest["nodes"][0])
        edit(*args)
        match = match.replace("{}", conv["name"])
        write_bundle(tmp_path / "big.sqb", manifest, tensors)
        _both_refuse(tmp_path / "big.sqb", match)


def test_a_small_bundle_cannot_ask_for_unbounded_memory(bundles, tmp_path, monkeypatch):
    from shiftquant.export.format import bundle as bundle_format

    manifest, tensors = read_bundle(bundles["plain"][0])
    conv = next(n for n in manifest["nodes"] if n["op"] == "shift_conv2d")
    conv["padding"] = [3000, 3000]  # a few bytes that would make the reference's im2col 10^8 values
    write_bundle(tmp_path / "wide.sqb", manifest, tensors)
    _both_refuse(tmp_path / "wide.sqb", "padded input .* exceed")
    manifest, tensors = read_bundle(bundles["plain"][0])
    write_bundle(tmp_path / "bomb.sqb", manifest, {**tensors, "zeros": np.zeros(1 << 20, np.uint8)})
    monkeypatch.setattr(bundle_format, "MAX_BODY", 1 << 19)
    with pytest.raises(BundleError, match="inflates beyond"):
        sq.load_bundle(tmp_path / "bomb.sqb")


class _Padded(nn.Module):
    """A 1x1 convolution with a huge zero padding, then a strided one: tiny, valid, integer-only."""

    def __init__(self, pad: int, stride: int):
        super().__init__()
        width = (8 + 2 * pad - stride) // stride + 1
        self.f = nn.Sequential(nn.Conv2d(1, 2, 1, padding=(0, pad)), nn.BatchNorm2d(2), nn.ReLU(),
                               nn.Conv2d(2, 2, (1, stride), stride=(1, stride)), nn.BatchNorm2d(2), nn.ReLU(),
                               nn.Flatten(), nn.Linear(2 * width, 10))

    def forward(self, x):
        return self.f(x)


def test_the_c_layout_refuses_borders_beyond_its_limit_instead_of_a_huge_arena(tmp_path):
    torch.manual_seed(0)
    model = _Padded(32768, 64).eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", act_shift_bits=2))
    px = sq.PixelInput((0.3,), (0.4,), 255)
    p = np.random.default_rng(0).integers(0, 256, (4, 1, 1, 8)).astype(np.uint8)
    sq.calibrate(model, [px.to_float(p)])
    rt = sq.export(model, tmp_path / "pad.sqb", px.to_float(p[:1]), px)
    assert rt.manifest["integer_only"] and rt.run(p).shape == (4, 10)
    from shiftquant.errors import CodegenError
    with pytest.raises(CodegenError, match="zero borders hold .* values, beyond"):
        CRuntime(rt)


def test_manifest_fields_that_are_printed_are_checked(bundles, tmp_path):
    from shiftquant.cli import main

    manifest, tensors = read_bundle(bundles["mlp"][0])
    for edit in ({"exact": "\x1b]0;title\x07yes"}, {"nodes": None}):
        write_bundle(tmp_path / "m.sqb", {**manifest, **edit}, tensors)
        with pytest.raises(BundleError):
            sq.load_bundle(tmp_path / "m.sqb")
        assert main(["summary", str(tmp_path / "m.sqb")]) == 2
    bad = dict(manifest, nodes=[dict(manifest["nodes"][0], op="\x1b[2Jx")] + manifest["nodes"][1:])
    write_bundle(tmp_path / "op.sqb", bad, tensors)
    with pytest.raises(BundleError) as err:
        sq.load_bundle(tmp_path / "op.sqb")
    assert "\x1b" not in str(err.value)
