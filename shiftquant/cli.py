"""``shiftquant export | run | codegen | summary | sensitivity``: the command line of the export path
and of per-layer precision."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, ShiftQuantError
from .export.c.cortex_m import TARGETS
from .export.c.lower import WEIGHT_FORMATS


def _export(args) -> None:
    from .checkpoint import checkpoint_meta, load_model
    from .export import export
    from .export.onnx.lower import run_onnx, write_onnx

    meta = checkpoint_meta(args.checkpoint)
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else meta.get("input_shape")
    if not shape:
        raise ShiftQuantError("the checkpoint does not record its input shape: pass --input-shape C,H,W")
    model = load_model(args.checkpoint)
    example = torch.zeros(1, *shape)
    if args.qonnx:
        _export_qonnx(model, args.qonnx, shape, args.qonnx_form)
    if args.output is None:
        if not args.qonnx:
            raise ShiftQuantError("export: name the bundle to write (OUTPUT), or --qonnx FILE, or both")
        return
    pixels = _pixel_input(meta)
    rt = export(model, args.output, example, pixels, allow_approximate=args.allow_approximate)
    a = rt.manifest["agreement"]
    print(f"wrote {args.output} ({Path(args.output).stat().st_size:,} bytes): "
          f"{sum(1 for n in rt.nodes if n['op'].startswith('shift_'))} shift layers, "
          f"input {'uint8 pixels' if pixels else 'float32'}, {len(rt.float_ops)} float ops "
          f"(integer-only: {rt.manifest['integer_only']}), exact={rt.manifest['exact']}; against the PyTorch hard "
          f"model on {a['images']} check inputs: top-1 agreement {100 * a['top1']:.1f} %, largest logit difference "
          f"{a['max_abs_diff']:.3g} (tolerance {a['tolerance']:.3g})")
    if args.onnx:
        write_onnx(rt, args.onnx)
        x = rt.input_from_float(torch.randn(8, *shape).numpy())
        diff = float(np.abs(run_onnx(args.onnx, x) - rt.run(x)).max())
        print(f"wrote {args.onnx} (the bundle's graph); onnxruntime vs the reference runtime on 8 random inputs: "
              f"max |diff| = {diff:.3g}" + (" (bit-identical)" if diff == 0 else ""))


def _export_qonnx(model, path: str, shape: list[int], form: str) -> None:
    from .export import QONNX_FORMS, export_qonnx, hard_output

    try:
        export_qonnx(model, path, torch.zeros(1, *shape), check=False, form=form)
    except ImportError as exc:
        raise ShiftQuantError(f"--qonnx needs the [fpga] extra (pip install -e '.[fpga]'): {exc}") from None
    from .export.qonnx.lower import run_qonnx

    x = torch.randn(8, *shape)
    diff = float(np.abs(run_qonnx(path, x.numpy()) - hard_output(model, x)).max())
    print(f"wrote {path} (QONNX, {form} form: {QONNX_FORMS[form]}; docs/fpga.md); qonnx's executor vs the PyTorch "
          f"hard model on 8 random inputs: max |diff| = {diff:.3g}")


def test_set(name: str, root: str | None):
    """The test split of a data module, as a training run's final evaluation reads it."""
    from .data import DATAMODULES
    if name not in DATAMODULES:
        raise ShiftQuantError(f"--data {name!r}: allowed {', '.join(DATAMODULES)}")
    kwargs = {"root": root} if root else {}
    dm = DATAMODULES[name](batch_size=64, **kwargs)
    dm.check()
    dm.setup()
    return dm.test_set


def bundle_accuracy(rt, data, batch_size: int = 64, limit: int | None = None) -> tuple[int, int]:
    """``(correct, seen)``: top-1 of a loaded bundle over the first ``limit`` items of ``data``."""
    n = min(len(data), limit) if limit else len(data)
    correct = 0
    for lo in range(0, n, batch_size):
        items = [data[i] for i in range(lo, min(lo + batch_size, n))]
        x = torch.stack([a for a, _ in items]).numpy()
        y = np.array([int(b) for _, b in items])
        correct += int((rt.run(rt.input_from_float(x)).argmax(1) == y).sum())
    return correct, n


def run_test_set(run_dir: str | Path):
    """``(test set, results)`` of a training run: its own test split, rebuilt image for image from
    its ``results.json`` (data config and seed: ``test_subset`` draws the same images)."""
    import json

    from .train.run import build_datamodule

    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShiftQuantError(f"--split-from {run_dir}: cannot read {path} ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("data_config"), dict):
        raise ShiftQuantError(f"--split-from {run_dir}: {path} has no data_config (a run before shiftquant wrote "
                              "one): pass --data and --root, and note that a test_subset cannot be rebuilt")
    seed = results.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ShiftQuantError(f"--split-from {run_dir}: {path} has seed={seed!r}, not an integer")
    dm = build_datamodule(results["data_config"], seed)
    dm.setup()
    return dm.test_set, results


def _run(args) -> None:
    from .export import load_bundle

    rt = load_bundle(args.bundle, backend=args.backend)
    if args.split_from:
        if args.data or args.root or args.limit:
            raise ShiftQuantError("--split-from takes the run's own test split: drop --data, --root and --limit")
        data, results = run_test_set(args.split_from)
        name = f"{results['data_config'].get('name')} test split of {args.split_from}"
    else:
        data, results, name = test_set(args.data or "digits", args.root), None, f"{args.data or 'digits'} test set"
    started = time.perf_counter()
    correct, seen = bundle_accuracy(rt, data, args.batch_size, args.limit)
    elapsed = time.perf_counter() - started
    print(f"{args.bundle}: top-1 {100 * correct / seen:.2f}% ({correct}/{seen}) on the {name} "
          f"(hard model, eps = 0); {seen / elapsed:.1f} images/s ({args.backend} backend)")
    printed = (results or {}).get("hard_test_acc")
    if isinstance(printed, (int, float)):
        expected = round(printed * seen)
        print(f"the run printed {100 * printed:.2f}% ({expected}/{seen}): "
              + ("reproduced to the image" if expected == correct else f"{correct - expected:+d} images"))


def _codegen(args) -> None:
    from .export.c import codegen, cortex_m

    out = Path(args.outdir)
    if args.target != "host":
        if args.weights != "packed":
            raise ConfigError("--weights", args.weights, f"packed with --target {args.target} (a microcontroller "
                              "project keeps the bundle's packed codes: least flash)")
        images = None if args.images is None else np.load(args.images, allow_pickle=False)
        program = cortex_m.write_project(args.bundle, out, args.name, images, args.target)
        print(f"wrote a {args.target} project for QEMU's {cortex_m.TARGETS[args.target].machine} to {out} "
              f"(make && make run); model flash {program.flash_bytes:,} bytes of constants, RAM "
              f"{program.ram_bytes:,} bytes")
        if not cortex_m.tools_missing():
            built = cortex_m.build(out, args.name, program.stack_bytes, args.target)
            cortex_m.stamp_header(out / f"{args.name}.h", args.name, built)
            print(f"built {built.elf.name} with {cortex_m.CC} -Os: the model takes {built.flash_bytes:,} bytes of "
                  f"flash (code and constants) and {built.ram_bytes:,} bytes of RAM")
        return
    program = codegen(args.bundle, args.outdir, args.name, args.weights, args.borders)
    print(f"wrote {out / (args.name + '.h')} and {out / (args.name + '.c')}: {len(program.kernels)} kernels; "
          f"flash {program.flash_bytes:,} bytes ({args.weights} weights), RAM {program.ram_bytes:,} bytes "
          f"(arena {program.arena_bytes:,} + stack {program.stack_bytes:,}); entry point "
          f"int {args.name}_run(const {program.input.ctype} *input, int32_t *output)")
    if program.input_kind == "pixels" and program.output_kind == "logits" and not cortex_m.tools_missing():
        built = cortex_m.measure(args.bundle)
        cortex_m.stamp_header(out / f"{args.name}.h", args.name, built)
        print(f"built for a Cortex-M4 ({cortex_m.CC} -Os): flash {built.flash_bytes:,} bytes, RAM "
              f"{built.ram_bytes:,} bytes (in {args.name}.h)")


def c_sizes(rt, cortex_m: bool = False) -> dict:
    """Flash and RAM of the bundle's C code (``shiftquant codegen``), or why it has none; the
    int8 equivalent's flash (a byte per weight, an int32 bias per output channel); with
    ``cortex_m``, the model's flash and RAM built for a Cortex-M4 (``cortex_m.measure``)."""
    from .errors import CodegenError
    from .export.c import cortex_m as target
    from .export.c import lower

    try:
        packed = lower(rt, weights="packed", borders="minimal")  # a microcontroller's choice: least flash and RAM
        tables, lists = lower(rt, weights="tables"), lower(rt, weights="lists")
    except CodegenError as exc:
        return {"refused": str(exc)}
    sizes = {"flash_packed": packed.flash_bytes, "flash_tables": tables.flash_bytes, "flash_lists": lists.flash_bytes,
             "ram": packed.ram_bytes, "int8_flash": packed.int8_flash_bytes}
    if cortex_m:
        try:
            built = target.measure(rt)
            sizes["cortex_m4"] = {"flash": built.flash_bytes, "ram": built.ram_bytes}
        except CodegenError as exc:
            sizes["cortex_m4"] = {"refused": str(exc)}
    return sizes


def _pixel_input(meta: dict):
    """How the checkpoint's data module makes the model's input from pixels (None where it does not say)."""
    from .data import DATAMODULES
    from .export import PixelInput

    datamodule = DATAMODULES.get(meta.get("data"))
    return None if datamodule is None else PixelInput.of(datamodule)


def bundle_summary(path: str, cortex_m: bool = False) -> dict:
    """Sizes, op counts and integer types of a bundle; ``float32_bytes`` is what its parameters take
    as float32. ``float_ops`` and ``integer_only`` are observed by running the bundle once.
    ``cortex_m``: also build its C for a Cortex-M4 and measure flash and RAM (``arm-none-eabi-size``)."""
    from .export import load_bundle
    from .export.format.pixels import describe_input
    from .export.trace.exporter import observed_float_ops

    rt = load_bundle(path)
    manifest, tensors = rt.manifest, rt.tensors
    observed = observed_float_ops(manifest, tensors)
    rows, float_bytes = [], 0
    for node in manifest["nodes"]:
        if node["op"].startswith("shift_"):
            count = int(np.prod(node["weight_shape"]))
            bits = node["weight_quantizer"]["code_bits"]
            rows.append((node.get("module") or node["name"], node["op"], bits, count, node["accumulator_dtype"],
                         node["dtype"]))
            float_bytes += 4 * count + 4 * node["weight_shape"][0] * (node.get("bias") is not None)
        else:
            float_bytes += sum(tensors[node[k]].size * 4 for k in ("weight", "bias", "mean", "var")
                               if node.get(k) and node[k] in tensors)
    size = Path(path).stat().st_size
    return {"rows": rows, "bundle_bytes": size, "float32_bytes": float_bytes,
            "compression": float_bytes / size, "float_ops": observed, "exact": manifest.get("exact", False),
            "requantized": sum(1 for n in manifest["nodes"] if n.get("requant")),
            "integer_only": not observed, "claims_integer_only": manifest["integer_only"], "c": c_sizes(rt, cortex_m),
            "agreement": manifest.get("agreement"),
            "macs": bundle_macs(manifest, tensors),
            "input": next(n["dtype"] for n in manifest["nodes"] if n["op"] == "input"),
            "input_description": describe_input(next(n for n in manifest["nodes"] if n["op"] == "input")),
            "types": {t: sum(1 for n in manifest["nodes"] if n["dtype"] == t)
                      for t in sorted({n["dtype"] for n in manifest["nodes"]})}}


def bundle_macs(manifest: dict, tensors: dict) -> dict:
    """MACs per example by how they run: shift layers as shift-adds, layers kept float (``conv2d``,
    ``linear``) and products of activations (``matmul``, ``attention``) in float; ``integer``
    (integer multiplies) has no op in the bundle today. Shapes are the ones the load proved
    (``Runtime.facts``), at batch 1."""
    from .export import ops
    from .export.reference.runtime import Runtime

    rt = Runtime(manifest, tensors, "summary", strict=False)
    shapes = {}
    for node in manifest["nodes"]:
        shape, dim = list(rt.facts[node["name"]].shape), node.get("batch_dim", 0)
        if dim is not None:
            shape.insert(dim, 1)
        shapes[node["name"]] = shape
    macs = {"shift_add": 0, "integer": 0, "float": 0}
    for node in manifest["nodes"]:
        count = ops.get(node["op"]).macs
        if count is not None:
            kind, n = count(node, shapes, tensors)
            macs[kind] += n
    macs["total"] = sum(macs.values())
    return macs


def _summary(args) -> None:
    from .export.c.cortex_m import tools_missing

    s = bundle_summary(args.bundle, cortex_m=not tools_missing())
    nw = max([len("layer"), *(len(r[0]) for r in s["rows"])])
    print(f"{'layer':<{nw}} {'op':<14} {'W bits':>6} {'weights':>10} {'acc':>6} {'out':>7}")
    for name, op, bits, count, acc, out in s["rows"]:
        print(f"{name:<{nw}} {op:<14} {bits:>6} {count:>10,} {acc:>6} {out:>7}")
    print(f"input: {s['input_description']}")
    print(f"shift layers {len(s['rows'])} ({s['requantized']} hand on codes through integer thresholds), "
          f"input {s['input']}, float ops observed {len(s['float_ops'])} {s['float_ops'][:4]}, "
          f"integer-only (observed): {s['integer_only']}, exact parity: {s['exact']}")
    a = s["agreement"]
    print("agreement with the PyTorch hard model at export: " + (
        "not recorded (a bundle from before shiftquant measured it)" if a is None else
        f"top-1 {100 * a['top1']:.1f} % of {a['images']} check inputs, largest logit difference "
        f"{a['max_abs_diff']:.3g} (tolerance {a['tolerance']:.3g})"))
    print("node types: " + ", ".join(f"{t} {c}" for t, c in s["types"].items()))
    m = s["macs"]
    if m["total"]:
        from .summary import mac_line
        print(mac_line(m["total"], m["shift_add"], m["integer"], m["float"]))
    print(f"bundle {s['bundle_bytes']:,} bytes; its parameters as float32 {s['float32_bytes']:,} bytes: "
          f"{s['compression']:.2f}x smaller")
    c = s["c"]
    print(f"C code: no ({c['refused']})" if "refused" in c else
          f"C code (shiftquant codegen): flash {c['flash_packed']:,} bytes of constants with packed weights "
          f"({c['flash_tables']:,} with tables, {c['flash_lists']:,} with lists), RAM {c['ram']:,} bytes (minimal borders); int8 equivalent: {c['int8_flash']:,} "
          "bytes (a byte per weight, an int32 bias per channel)")
    m4 = c.get("cortex_m4")
    if m4 is not None:
        print(f"on a Cortex-M4: no ({m4['refused']})" if "refused" in m4 else
              f"on a Cortex-M4 (arm-none-eabi-gcc -Os, code included): flash {m4['flash']:,} bytes, "
              f"RAM {m4['ram']:,} bytes")


def _float_model(args):
    """The float model to measure: a shiftquant checkpoint of a float run, or any weights file
    with ``--model`` (and ``--classes`` / ``--in-chans``)."""
    from .checkpoint import checkpoint_meta
    from .errors import CheckpointError
    from .models.factory import build_model, load_weights

    try:
        meta = checkpoint_meta(args.weights)
    except CheckpointError:
        meta = None
    if meta is not None and meta.get("recipe"):
        raise ShiftQuantError(f"{args.weights} holds a quantized model; sensitivity measures a float one "
                              "(the checkpoint of a quant=none run, or a float weights file with --model)")
    name = meta["model"]["name"] if meta else args.model
    if not name:
        raise ShiftQuantError(f"{args.weights} is not a shiftquant checkpoint: pass --model NAME")
    model = build_model(name, meta["num_classes"] if meta else args.classes, meta["in_chans"] if meta else args.in_chans,
                        options=meta["model"].get("options") if meta else None)
    load_weights(model, args.weights)
    return model.eval()


def _sensitivity(args) -> None:
    import json

    import yaml

    from .data import DATAMODULES
    from .mixed import assign_bits, sensitivity
    from .recipe import QuantRecipe

    model = _float_model(args)
    if args.data not in DATAMODULES:
        raise ShiftQuantError(f"--data {args.data!r}: allowed {', '.join(DATAMODULES)}")
    dm = DATAMODULES[args.data](batch_size=64, **({"root": args.root} if args.root else {}))
    dm.check()
    fields = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ShiftQuantError(f"--set {item!r}: expected KEY=VALUE (a QuantRecipe field)")
        fields[key] = yaml.safe_load(value)
    recipe = QuantRecipe.preset(args.preset, **fields)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sens = sensitivity(model, recipe, dm.calibration_batches(args.batches), args.candidates,
                       cache=out / "sensitivity.json", progress=True)
    print(sens)
    (out / "sensitivity_table.json").write_text(json.dumps(sens.to_dict(), indent=1))
    print(f"heat map: {sens.plot(out / 'sensitivity.png')}")
    if args.budget_bits:
        chosen = assign_bits(sens, bits_per_weight=args.budget_bits, recipe=recipe)
        print(f"widths under a budget of {args.budget_bits:g} bits per weight ({chosen.bits_per_weight:.3f} used, "
              f"{chosen.weight_bytes:,.0f} bytes of weights); a layer of s shift bits stores each weight in the "
              f"bits per weight shown:\n{chosen.table()}")
        print("as overrides: quant.overrides=" + json.dumps(chosen.recipe(recipe).overrides).replace('"', ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shiftquant", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint -> bundle (and ONNX, QONNX)")
    e.add_argument("checkpoint")
    e.add_argument("output", nargs="?", help="the bundle to write (optional with --qonnx)")
    e.add_argument("--onnx", help="also write this ONNX file and check it in onnxruntime")
    e.add_argument("--qonnx", help="write this QONNX file (FINN / hls4ml; the [fpga] extra) and check it in qonnx")
    e.add_argument("--qonnx-form", choices=["thresholds", "float"], default="thresholds",
                   help="thresholds (default): BatchNorm and activations folded into MultiThreshold nodes (FINN); "
                        "float: the graph before requantization, which hls4ml's QONNX frontend reads")
    e.add_argument("--input-shape", help="C,H,W when the checkpoint does not record it")
    e.add_argument("--allow-approximate", action="store_true",
                   help="write the bundle even when it disagrees with the PyTorch hard model (docs/export.md)")
    e.set_defaults(fn=_export)
    r = sub.add_parser("run", help="accuracy of a bundle on a test set")
    r.add_argument("bundle")
    r.add_argument("--data", help="the data set whose whole test set is read (default: digits)")
    r.add_argument("--root")
    r.add_argument("--limit", type=int, help="only the first N test images (not a run's test_subset: --split-from)")
    r.add_argument("--split-from", metavar="RUN_DIR", help="the test split of a training run, rebuilt from its "
                   "results.json (test_subset included), to reproduce its printed hard accuracy")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--backend", choices=["reference", "c"], default="reference",
                   help="the numpy reference runtime, or the generated C compiled for this machine")
    r.set_defaults(fn=_run)
    g = sub.add_parser("codegen", help="bundle -> NAME.h and NAME.c (portable C99, static buffers)")
    g.add_argument("bundle")
    g.add_argument("outdir")
    g.add_argument("--name", default="model", help="C prefix of the files and functions (default: model)")
    g.add_argument("--weights", choices=list(WEIGHT_FORMATS), default="packed",
                   help="packed: the bundle's bit-packed codes (least flash); tables: precomputed offsets and level "
                        "tables (fastest); lists: the offsets without the level tables (large models on a host)")
    g.add_argument("--target", choices=["host", *TARGETS], default="host",
                   help="cortex-mN: also a bare-metal project (startup, main, linker script, Makefile) for the QEMU "
                        "board with that core (microbit, mps2-an385, -an386, -an500, -an505, mps3-an547), built with "
                        "arm-none-eabi-gcc -Os (packed weights)")
    g.add_argument("--borders", choices=["shared", "minimal"], default="shared",
                   help="host target: shared (one border per image size: long vector loops, the default) or "
                        "minimal (a border only where a padded convolution reads: least RAM); cortex-mN: minimal")
    g.add_argument("--images", help="with --target: a .npy of integer inputs (n, C, H, W) the project's main runs")
    g.set_defaults(fn=_codegen)
    v = sub.add_parser("sensitivity", help="per-layer sensitivity to each width (KL, hard), table and heat map")
    v.add_argument("weights", help="a float run's checkpoint, or a weights file with --model")
    v.add_argument("--model", help="model name when WEIGHTS is not a shiftquant checkpoint")
    v.add_argument("--classes", type=int, default=10)
    v.add_argument("--in-chans", type=int, default=3)
    v.add_argument("--data", default="digits")
    v.add_argument("--root")
    v.add_argument("--preset", default="shiftquant", help="the recipe whose layers are measured")
    v.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="recipe fields, e.g. act_shift_bits=2")
    v.add_argument("--candidates", type=int, nargs="+", default=[0, 1, 2, 3], help="shift bits to measure")
    v.add_argument("--batches", type=int, default=4, help="calibration batches of 64 training images")
    v.add_argument("--budget-bits", type=float, help="also choose the widths under this many bits per weight")
    v.add_argument("--out", default="sensitivity", help="folder for the table, cache and heat map")
    v.set_defaults(fn=_sensitivity)
    s = sub.add_parser("summary", help="layers, bits, bytes, ops of a bundle")
    s.add_argument("bundle")
    s.set_defaults(fn=_summary)
    args = p.parse_args(argv)
    try:
        args.fn(args)
    except ShiftQuantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
