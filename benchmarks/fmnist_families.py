"""Fashion-MNIST rows of the integer-only families, each with a float control on the same budget.

Every row is ``conf/experiment/fmnist_plain_w3a3.yaml`` (a float stage, then 3 epochs) with
``model=NAME``, in three variants, over seeds 0, 1, 2:

- ``integer``: W3A3 ``deploy`` (the bundle runs integer-only);
- ``float``: ``quant=none`` from the integer run's float-stage checkpoint (the same float stage),
  then the same epochs, optimizer and learning rates in float (without distillation, which
  needs a quantized student);
- ``pools-float`` (where the integer form changes the model): the same recipe with
  ``quant.residual_bits=null``, so average pools, residual adds, and (MobileNetV3) the
  activation tables and squeeze-excite gates, (ViT) LayerNorm, the softmax, the attention
  products and the token embeddings stay float: the accuracy cost of the integer ops themselves.

Runs are cached (a finished run is not rerun): ``benchmarks/results/fmnist-families-v2/`` keeps one
trimmed result file per run (no paths). The recipe is the experiment's, fixed before any of these
runs; the table reports validation and test accuracy of the hard (eps = 0) model, means over
seeds, and Welch p-values against the float control.

    python benchmarks/fmnist_families.py [--models lenet5 ...] [--seeds 0 1 2] [--report-only]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fmnist-families-v2"
RUNS = ROOT / "outputs" / "fmnist-families-v2"  # ignored: checkpoints and logs
VARIANTS = {"integer": [], "float": ["quant=none", "float_stage.epochs=0", "distill.enabled=false"],
            "pools-float": ["quant.residual_bits=null"]}
MODELS = {"lenet5": ["integer", "float"], "lenet5_avg": ["integer", "float", "pools-float"],
          "vgg_small": ["integer", "float"], "timm:mobilenetv2_050": ["integer", "float", "pools-float"],
          "timm:mobilenetv3_small_050": ["integer", "float", "pools-float"],
          "timm:efficientnet_lite0": ["integer", "float", "pools-float"],
          "timm:vit_tiny_patch16_224": ["integer", "float", "pools-float"]}
# Constructor options where the model needs them (conf/model/NAME.yaml).
MODEL_CONFIGS = {"timm:vit_tiny_patch16_224": "model=timm_vit_tiny"}
KEPT = ("model", "seed", "epochs", "float_stage_epochs", "start_val_acc", "wall_time_s", "split_sizes")


def run(model: str, variant: str, seed: int) -> dict:
    """One training run's trimmed results (cached)."""
    tag = f"{model.replace(':', '_')}-{variant}-s{seed}"
    out = RESULTS / f"{tag}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = RUNS / tag
    extra = list(VARIANTS[variant])
    if variant == "float":  # the integer run's float stage, then float epochs
        start = RUNS / f"{model.replace(':', '_')}-integer-s{seed}" / "float_stage" / "checkpoints" / "float.ckpt"
        extra.append(f"model.weights={start.relative_to(ROOT)}")
    config = [MODEL_CONFIGS[model]] if model in MODEL_CONFIGS else []
    cmd = [sys.executable, "train.py", "experiment=fmnist_plain_w3a3", *config, f"model.name={model}", f"seed={seed}",
           "test=final", f"hydra.run.dir={run_dir}", *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    full = json.loads((run_dir / "results.json").read_text())
    command = ["python", "train.py", *(c for c in cmd[2:] if not c.startswith("hydra.run.dir="))]
    kept = {k: full[k] for k in KEPT if k in full} | {
        "variant": variant, "command": " ".join(command),
        "val_acc": full.get("hard_val_acc", full.get("val_acc")),  # a float run's model is its own hard model
        "test_acc": full.get("hard_test_acc", full.get("fp_test_acc"))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept, indent=2))
    return kept


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy.stats import ttest_ind
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def report(rows: dict) -> str:
    lines = ["| model | variant | val (hard) | test (hard) | test - float | Welch p (test) | s / run |",
             "|---|---|---|---|---|---|---|"]
    for model, variants in rows.items():
        control = [r["test_acc"] * 100 for r in variants.get("float", [])]
        for variant, runs in variants.items():
            val = [r["val_acc"] * 100 for r in runs]
            test = [r["test_acc"] * 100 for r in runs]
            spread = lambda v: f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
            diff = p = "-"
            if variant != "float" and len(control) > 1 and len(test) > 1:
                diff, p = f"{statistics.mean(test) - statistics.mean(control):+.2f}", f"{welch_p(test, control):.3g}"
            wall = statistics.mean(r["wall_time_s"] for r in runs)
            lines.append(f"| `{model}` | {variant} | {spread(val)} | {spread(test)} | {diff} | {p} | {wall:.0f} |")
    costs = []
    for model, variants in rows.items():  # the integer ops themselves: integer against pools-float
        a, b = ([r["test_acc"] * 100 for r in variants.get(v, [])] for v in ("integer", "pools-float"))
        if len(a) > 1 and len(b) > 1:
            costs.append(f"- `{model}`: integer ops cost {statistics.mean(a) - statistics.mean(b):+.2f} points of test "
                         f"accuracy against the same recipe with them in float (Welch p = {welch_p(a, b):.3g})")
    return "\n".join(lines + [""] + costs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--report-only", action="store_true", help="only the cached runs")
    args = p.parse_args()
    rows: dict = {}
    for model in args.models:
        for variant in MODELS[model]:
            for seed in args.seeds:
                cached = RESULTS / f"{model.replace(':', '_')}-{variant}-s{seed}.json"
                if args.report_only and not cached.exists():
                    continue
                rows.setdefault(model, {}).setdefault(variant, []).append(run(model, variant, seed))
                print(f"{model} {variant} seed {seed}: test {rows[model][variant][-1]['test_acc']:.4f}", flush=True)
    print(report(rows))


if __name__ == "__main__":
    main()
