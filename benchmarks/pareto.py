"""Mixed precision against uniform widths: hard accuracy against model bytes (issue 14).

    python benchmarks/pareto.py                 # the full protocol (~30 min alone on 2 cores)
    python benchmarks/pareto.py --quick         # a smoke test
    python benchmarks/pareto.py --report        # table, plot and verdicts from the cached results

ResNet-20 on Fashion-MNIST, fine-tuned from the protocol's float artifact with our recipe on the
weights (the 3x3 block convolutions; inputs float) under the protocol-v2 budget of
``benchmarks/accuracy.py`` (one seed): uniform shift bits s = 1, 2, 3 (2, 3, 4 code bits per
weight), and widths chosen per layer by sensitivity (``quant.mixed``, candidates s = 0..3) under
1.5, 2.0 and 2.5 bits per weight on average; plus the post-training row (no fine-tuning) of each
uniform width. Every run is cached as ``RESULTS/NAME/seed0.json`` (resumable). Model bytes are
``sq.summary``'s: quantized weights at their code width, per-channel scales, float layers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import BUDGETS, COMMON, KD, SHORT_RELAX, _null, result_path, run_one  # noqa: E402

UNIFORM = (1, 2, 3)
BUDGET_BITS = (1.5, 2.0, 2.5)
BASE = ["quant=shiftquant", "quant.act_shift_bits=null", *SHORT_RELAX, *KD]


def configurations() -> dict[str, list[str]]:
    cfgs = {f"uniform_s{s}": BASE + [f"quant.weight_shift_bits={s}"] for s in UNIFORM}
    cfgs.update({f"mixed_{b:g}": BASE + [f"quant.mixed.budget_bits={b}", "quant.mixed.candidates=[0,1,2,3]",
                                         "quant.mixed.batches=8"] for b in BUDGET_BITS})
    cfgs.update({f"ptq_s{s}": ["quant=shiftquant", "quant.act_shift_bits=null", f"quant.weight_shift_bits={s}",
                               "trainer.max_epochs=0"] for s in UNIFORM})
    return cfgs


def load(results_dir: Path) -> dict[str, dict]:
    out = {}
    for name in configurations():
        path = result_path(results_dir, name, 0)
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def verdicts(results: dict[str, dict]) -> list[str]:
    """Each mixed point against the uniform frontier: the best uniform accuracy at the same or
    fewer bytes; and the 2.0-bit point against uniform s = 1 (2 bits per weight)."""
    uniform = [(r["model_bytes"], r["hard_test_acc"]) for n, r in results.items()
               if n.startswith("uniform_") and "hard_test_acc" in r]
    lines = []
    for b in BUDGET_BITS:
        r = results.get(f"mixed_{b:g}")
        if not r or "hard_test_acc" not in r:
            lines.append(f"- mixed {b:g} bits: **not run**")
            continue
        best = max((acc for size, acc in uniform if size <= r["model_bytes"]), default=None)
        if best is None:
            lines.append(f"- mixed {b:g} bits ({r['model_bytes']:,.0f} B): smaller than every uniform model; "
                         f"{100 * r['hard_test_acc']:.2f}% (a new point on the frontier)")
        else:
            ok = r["hard_test_acc"] >= best
            lines.append(f"- mixed {b:g} bits ({r['model_bytes']:,.0f} B): {100 * r['hard_test_acc']:.2f}% vs the best "
                         f"uniform model of at most that size {100 * best:.2f}%: "
                         f"**{'on or above' if ok else 'below'} the uniform frontier**")
    m2, s1 = results.get("mixed_2"), results.get("uniform_s1")
    if m2 and s1 and "hard_test_acc" in m2 and "hard_test_acc" in s1:
        gain = 100 * (m2["hard_test_acc"] - s1["hard_test_acc"])
        lines.append(f"- target, 2.0 bits at least 0.5 points above uniform s = 1 ({s1['model_bytes']:,.0f} B, "
                     f"{m2['model_bytes']:,.0f} B mixed): {gain:+.2f} points: **{'met' if gain >= 0.5 else 'missed'}**")
    return lines


def report(results_dir: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load(results_dir)
    rows = ["| run | bits / weight | model bytes | hard acc (eps = 0) | relaxed acc | widths |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "hard_test_acc" not in r:
            rows.append(f"| {name} | | | failed: {r.get('failed', '?')[:80]} | | |")
            continue
        mixed = r.get("mixed") or {}
        bits = f"{mixed['bits_per_weight']:.3f}" if mixed else f"{int(name[-1]) + 1}"
        widths = ", ".join(str(v) for v in mixed.get("widths", {}).values())
        relaxed = "-" if r.get("ptq") else f"{100 * r['relaxed_test_acc']:.2f}%"
        rows.append(f"| {name} | {bits} | {r['model_bytes']:,.0f} | {100 * r['hard_test_acc']:.2f}% | {relaxed} | {widths} |")
    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix, style, label in (("uniform_", "o-", "uniform s = 1, 2, 3 (frontier)"), ("mixed_", "s", "mixed by sensitivity"),
                                 ("ptq_", "x:", "PTQ (no fine-tuning)")):
        pts = sorted((r["model_bytes"], 100 * r["hard_test_acc"]) for n, r in results.items()
                     if n.startswith(prefix) and "hard_test_acc" in r)
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xlabel("model bytes (sq.summary)")
    ax.set_ylabel("hard test accuracy (eps = 0), %")
    ax.set_title("ResNet-20 / Fashion-MNIST: accuracy vs memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results_dir / "pareto_mixed.png", dpi=120)
    plt.close(fig)
    return "\n".join(rows + [""] + verdicts(results))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", action="store_true", help="only the table, plot and verdicts")
    p.add_argument("--only", nargs="*", help="configuration names (default: all)")
    p.add_argument("--out", help="results folder (default benchmarks/results/fmnist-r20-pareto[-quick])")
    args = p.parse_args(argv)
    tag = "fmnist-r20-pareto" + ("-quick" if args.quick else "")
    results_dir = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / tag
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        budget = BUDGETS["quick" if args.quick else "full"]
        artifact = ROOT / "benchmarks" / "artifacts" / "fmnist-r20-float.safetensors"
        start = ["model=resnet20", "data=fashion_mnist", "trainer=cpu", "data.num_workers=0",
                 f"data.train_subset={_null(budget['train_subset'])}", f"data.val_subset={_null(budget['val_subset'])}",
                 f"data.test_subset={_null(budget['test_subset'])}", f"data.batch_size={budget['batch_size']}",
                 f"model.weights={artifact}", "float_stage.epochs=0", f"trainer.max_epochs={budget['qat_epochs']}",
                 *COMMON]
        for name, overrides in configurations().items():
            if args.only and name not in args.only:
                continue
            run_one(name, start + overrides, results_dir, results_dir / "runs")
    text = report(results_dir)
    (results_dir / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
