"""Turn the accuracy protocol's result files into tables and plots.

    python benchmarks/report.py [--results benchmarks/results/fmnist-r20] [--out BENCHMARKS.md]

Writes the markdown tables (to ``--out``, between the markers ``<!-- results:begin -->`` and
``<!-- results:end -->`` when the file has them) and two PNG plots next to the results: hard
accuracy after every epoch, and hard accuracy against model bytes (the Pareto frontier marked).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MAIN_ROWS = ["seed_w3", "ours_w3", "deepshift_w3", "uniform_w3", "seed_w3a3", "ours_w3a3", "deepshift_w3a3",
             "uniform_w3a3", "all_w3a3"]


def load(results_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.name != "protocol.json":
            out[path.stem] = json.loads(path.read_text())
    return out


def _acc(r: dict) -> float | None:
    return r.get("hard_test_acc", r.get("fp_test_acc"))


# The targets for our best recipe: (row, the most it may lose against the float control).
TARGETS = [("ours_w3", 0.1), ("ours_w3a3", 1.0), ("ours_s1_wa", 3.0)]
# Our row and the rows it must match or beat at the same setting.
RIVALS = {"ours_w3": ["seed_w3", "deepshift_w3", "uniform_w3"],
          "ours_w3a3": ["seed_w3a3", "deepshift_w3a3", "uniform_w3a3"]}


def verdicts(results: dict[str, dict]) -> list[str]:
    """One line per target: met or missed, with the numbers (points of hard accuracy)."""
    control = results.get("float_control")
    lines = []
    for name, budget in TARGETS:
        r = results.get(name)
        if r and "failed" in r:
            lines.append(f"- {name}: diverged ({r['failed'].split(';')[0]}): **missed**")
            continue
        if not control or not r or _acc(r) is None:
            lines.append(f"- {name}: not run")
            continue
        lost = 100 * (_acc(control) - _acc(r))
        lines.append(f"- {name}: loses {lost:+.2f} points against the float control (target <= {budget:g}): "
                     + ("**met**" if lost <= budget else "**missed**"))
    for name, rivals in RIVALS.items():
        r = results.get(name)
        done = [(n, _acc(results[n])) for n in rivals if n in results and _acc(results[n]) is not None]
        if not r or _acc(r) is None or not done:
            continue
        behind = [f"{n} ({100 * (a - _acc(r)):+.2f})" for n, a in done if a > _acc(r)]
        lines.append(f"- {name} vs {', '.join(n for n, _ in done)}: "
                     + (f"**behind** {', '.join(behind)}" if behind else "**at least as good as all**"))
    return lines


def tables(results: dict[str, dict], protocol: dict) -> str:
    control = results.get("float_control")
    base = results.get("float")
    ref = _acc(control) if control else None
    float_epoch = (control or base or {}).get("wall_time_per_epoch_s")
    lines = [f"Protocol `{protocol.get('protocol')}`, budget {json.dumps(protocol.get('budget'))}.", ""]
    if base:
        lines.append(f"Float model (from scratch, {base['epochs']} epochs): test accuracy **{100 * _acc(base):.2f}%**; "
                     + (f"float control (fine-tuned for the QAT budget): **{100 * ref:.2f}%**." if control else ""))
        lines.append("")
    lines += ["| configuration | hard acc (eps = 0) | lost vs float control | relaxed acc (eps) | epochs | "
              "model bytes | s/epoch (x float control) |",
              "|---|---|---|---|---|---|---|"]
    names = [n for n in MAIN_ROWS if n in results] + sorted(n for n in results if n.startswith("ours_s"))
    for name in names:
        r = results[name]
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} | - | - | - | - | - |")
            continue
        hard = _acc(r)
        lost = f"{100 * (ref - hard):+.2f}" if ref is not None else "-"
        relaxed = f"{100 * r['relaxed_test_acc']:.2f}% ({r['eps_final']:g})" if "relaxed_test_acc" in r else "-"
        ratio = f" ({r['wall_time_per_epoch_s'] / float_epoch:.2f}x)" if float_epoch else ""
        lines.append(f"| {name} | {100 * hard:.2f}% | {lost} | {relaxed} | {r['epochs']} | "
                     f"{r.get('model_bytes', 0):,.0f} | {r['wall_time_per_epoch_s']:.0f}{ratio} |")
    lines += ["", "Targets (ours against the float control; ours against the seed recipe and the baselines):", "",
              *verdicts(results)]
    lines += ["", "Commands: each row is `python benchmarks/accuracy.py --protocol fmnist-r20 --only NAME`; "
              "the exact overrides are in its result file (`command`)."]
    return "\n".join(lines)


def plots(results: dict[str, dict], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        hist = [(row["epoch"], row["hard_acc"]) for row in r.get("history", []) if "hard_acc" in row]
        if hist and name != "float":
            ax.plot(*zip(*hist), marker="o", label=name)
    ax.set_xlabel("epoch")
    paths.append(_finish(plt, fig, ax, out_dir / "accuracy_vs_epoch.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    points = [(r["model_bytes"], _acc(r), name) for name, r in results.items()
              if r.get("model_bytes") and _acc(r) is not None]
    for series, marker in (("_w", "o"), ("_wa", "s")):
        pts = sorted((b, a) for b, a, n in points if n.startswith("ours_") and n.endswith(series))
        if pts:
            ax.plot(*zip(*pts), marker=marker, linestyle=":", label="ours " + ("W-only" if series == "_w" else "W+A"))
    frontier, best = [], -1.0
    for b, a, n in sorted(points):
        if a > best:
            frontier.append((b, a))
            best = a
    if frontier:
        ax.step(*zip(*frontier), where="post", color="black", alpha=0.5, label="frontier")
    for b, a, n in points:
        ax.annotate(n, (b, a), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("model bytes")
    paths.append(_finish(plt, fig, ax, out_dir / "pareto.png"))
    return paths


def _finish(plt, fig, ax, path: Path) -> Path:
    """The plots' shared y axis, legend and grid; saves and closes the figure."""
    ax.set_ylabel("hard (eps = 0) test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(results_dir: Path, out: Path | None) -> str:
    results = load(results_dir)
    protocol = json.loads((results_dir / "protocol.json").read_text()) if (results_dir / "protocol.json").exists() else {}
    text = tables(results, protocol)
    for path in plots(results, results_dir):
        rel = path.relative_to(out.parent) if out and path.is_relative_to(out.parent) else path
        text += f"\n\n![{path.stem}]({rel})"
    if out:
        body = out.read_text() if out.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN in body and END in body:
            head, rest = body.split(BEGIN, 1)
            body = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        else:
            body += "\n" + text + "\n"
        out.write_text(body)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "fmnist-r20"))
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    print(render(Path(args.results), Path(args.out) if args.out else None))


if __name__ == "__main__":
    main()
