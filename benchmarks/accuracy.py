"""The accuracy protocol: the seed's recipe, ours and the baselines, measured in one harness.

    python benchmarks/accuracy.py --protocol fmnist-r20            # the full protocol (<= 2 h, 2 cores)
    python benchmarks/accuracy.py --protocol fmnist-r20 --quick    # a few hundred steps: a smoke test
    python benchmarks/accuracy.py --protocol fmnist-r20 --only seed_w3 ours_w3

Each configuration is one ``train(cfg)`` run of the training pipeline (Hydra overrides below),
cached as ``RESULTS/NAME.json``: a finished configuration is skipped, so an interrupted protocol
resumes where it stopped. Every QAT run starts from the same float model, trained once and kept as
a versioned artifact (``benchmarks/artifacts/``); the float control fine-tunes that model for the
same budget and learning-rate schedule as the QAT runs. Hard (eps = 0) accuracy is recorded after
every epoch. ``benchmarks/report.py`` turns the results into tables and plots.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Budgets: the full protocol must finish in at most 2 hours on 2 CPU cores. The validation split
# (5,000 images carved out of the 60,000 training images; val_subset of them are read after every
# epoch) picks nothing here but is logged; the test set (test_subset, null = all 10,000) is read
# once per run, at the end.
BUDGETS = {
    "full": {"train_subset": 10000, "val_subset": 2000, "test_subset": None, "float_epochs": 8, "qat_epochs": 3},
    "quick": {"train_subset": 256, "val_subset": 128, "test_subset": 256, "float_epochs": 1, "qat_epochs": 1},
}
# The learning rate of every fine-tuning run but the seed's (which keeps its own table).
QAT_LR = ["schedule.lr.start=0.01", "schedule.lr.end=0.0001"]
# eps 1 -> 1/128 every step over the first two thirds, then hard (eps = 0); cosine learning rate.
EXP = ["schedule=exponential", "schedule.eps.zero_tail=0.34", *QAT_LR]
HARD = ["schedule=float", "schedule.eps.value=0.0", *QAT_LR]  # eps = 0 from the first step


def _seed(acts: int | None) -> list[str]:
    return ["quant=dbssq", "quant.weight_shift_bits=2", f"quant.act_shift_bits={acts if acts else 'null'}",
            "schedule=dbssq"]


def _ours(bits: int, acts: bool) -> list[str]:
    return ["quant=shiftquant", f"quant.weight_shift_bits={bits}",
            f"quant.act_shift_bits={bits if acts else 'null'}", "distill.enabled=true", *EXP]


def configurations() -> dict[str, list[str]]:
    """Name -> overrides of each QAT configuration of the fmnist-r20 protocol."""
    cfgs = {
        "seed_w3": _seed(None), "seed_w3a3": _seed(2),
        "ours_w3": _ours(2, False), "ours_w3a3": _ours(2, True),
        # DeepShift-Q style: nearest log rounding, hard from the first step (straight-through).
        "deepshift_w3": ["quant=shiftquant", "quant.act_shift_bits=null", *HARD],
        "deepshift_w3a3": ["quant=shiftquant", "quant.act_shift_bits=2", *HARD],
        # Uniform 3-bit codes with a learned (power-of-two) scale, the same relaxation.
        "uniform_w3": ["quant=shiftquant", "quant.weight_shift_bits=null", "quant.weight_uniform_bits=3",
                       "quant.act_shift_bits=null", *EXP],
        "uniform_w3a3": ["quant=shiftquant", "quant.weight_shift_bits=null", "quant.weight_uniform_bits=3",
                         "quant.act_shift_bits=null", "quant.act_uniform_bits=3", *EXP],
        # Every Conv/Linear at W3A3 (signed inputs for the stem).
        "all_w3a3": ["quant=deploy", "quant.act_shift_bits=2", "distill.enabled=true", *EXP],
    }
    for bits in (0, 1, 3):  # the Pareto sweep (2 is ours_w3 / ours_w3a3)
        cfgs[f"ours_s{bits}_w"] = _ours(bits, False)
        cfgs[f"ours_s{bits}_wa"] = _ours(bits, True)
    return cfgs


def compose(overrides: list[str], out_dir: Path):
    from shiftquant.train.config import compose_config

    return compose_config([f"paths.output_dir={out_dir}", "trainer.enable_progress_bar=false",
                           "trainer.enable_model_summary=false", "logger=csv", *overrides], ROOT / "conf")


def model_bytes(checkpoint: str) -> dict:
    import shiftquant as sq
    from shiftquant.checkpoint import load_model

    s = sq.summary(load_model(checkpoint)).to_dict()
    return {"model_bytes": s["total_bytes"], "float_bytes": s["float_bytes"]}


def run_one(name: str, overrides: list[str], results_dir: Path, runs_dir: Path) -> dict:
    from shiftquant.train.module import NonFiniteLossError
    from shiftquant.train.run import train

    target = results_dir / f"{name}.json"
    if target.exists():
        print(f"[cached] {name}")
        return json.loads(target.read_text())
    started = time.time()
    try:
        results = train(compose(overrides, runs_dir / name))
    except NonFiniteLossError as e:  # a diverged configuration is a result too: record it, go on
        results = {"name": name, "overrides": overrides, "failed": str(e),
                   "command": "python train.py " + " ".join(overrides)}
        target.write_text(json.dumps(results, indent=2))
        print(f"[failed] {name}: {e}")
        return results
    results.update(name=name, overrides=overrides, wall_time_s=round(time.time() - started, 1))
    results["wall_time_per_epoch_s"] = round(results["wall_time_s"] / max(results["epochs"], 1), 1)
    if results.get("checkpoint"):
        results.update(model_bytes(results["checkpoint"]))
    results["command"] = "python train.py " + " ".join(overrides)
    target.write_text(json.dumps(results, indent=2))
    hard = results.get("hard_test_acc", results.get("fp_test_acc"))
    print(f"[done] {name}: hard (eps = 0) test acc {100 * hard:.2f}% in {results['wall_time_s']:.0f} s")
    return results


def main(argv=None) -> None:
    from shiftquant.errors import ShiftQuantError

    try:
        protocol(argv)
    except ShiftQuantError as exc:  # missing data, a bad override: one line, exit status 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _null(value) -> str:
    return "null" if value is None else str(value)


def protocol(argv=None) -> None:
    from shiftquant.train.run import prepare

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=["fmnist-r20"], required=True)
    p.add_argument("--quick", action="store_true", help="a few hundred steps per configuration")
    p.add_argument("--only", nargs="*", help="configuration names to run (float and float_control always run; "
                                             "no name: only those two)")
    p.add_argument("--out", help="results folder (default benchmarks/results/PROTOCOL[-quick])")
    p.add_argument("--artifact", help="the float model's weights (default benchmarks/artifacts/...)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra Hydra overrides for every run, e.g. trainer=gpu trainer.precision=32-true "
                        "data.num_workers=8 (results then differ from the 2-core CPU reference)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(configurations()))
    if unknown:
        p.error(f"--only: unknown configurations {unknown}; allowed: {', '.join(configurations())}")
    budget = BUDGETS["quick" if args.quick else "full"]
    tag = args.protocol + ("-quick" if args.quick else "")
    results_dir = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / tag
    runs_dir = results_dir / "runs"
    results_dir.mkdir(parents=True, exist_ok=True)
    artifact = Path(args.artifact) if args.artifact else ROOT / "benchmarks" / "artifacts" / f"{tag}-float.safetensors"
    data = ["model=resnet20", "data=fashion_mnist", "trainer=cpu", "data.num_workers=0",
            f"data.train_subset={budget['train_subset']}", f"data.val_subset={_null(budget['val_subset'])}",
            f"data.test_subset={_null(budget['test_subset'])}", "seed=0", *args.set]
    prepare(compose(data + ["quant=none", "schedule=float"], runs_dir / "check"))  # data and overrides, first
    (results_dir / "protocol.json").write_text(json.dumps({"protocol": args.protocol, "budget": budget, "data": data,
                                                           "artifact": str(artifact.relative_to(ROOT))
                                                           if artifact.is_relative_to(ROOT) else str(artifact)}, indent=2))

    float_run = run_one("float", data + ["quant=none", "schedule=float", "optim.weight_decay=5.0e-4",
                                         f"trainer.max_epochs={budget['float_epochs']}"], results_dir, runs_dir)
    if not artifact.exists():
        from safetensors.torch import save_file

        from shiftquant.models import read_state_dict
        artifact.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in read_state_dict(float_run["checkpoint"]).items()}, str(artifact))
    start = data + [f"model.weights={artifact}", "float_stage.epochs=0", f"trainer.max_epochs={budget['qat_epochs']}"]
    run_one("float_control", start + ["quant=none", "schedule=float", *QAT_LR], results_dir, runs_dir)
    for name, overrides in configurations().items():
        if args.only is not None and name not in args.only:
            continue
        run_one(name, start + overrides, results_dir, runs_dir)


if __name__ == "__main__":
    main()
