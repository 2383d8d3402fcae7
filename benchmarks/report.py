"""Turn the accuracy protocol's result files into tables, verdicts and plots.

    python benchmarks/report.py [--results benchmarks/results/fmnist-r20-v2] [--out BENCHMARKS.md]

Reads ``RESULTS/NAME/seedK.json`` (protocol v2; v1's ``RESULTS/NAME.json`` is read as seed 0).
Every row is the mean and sample standard deviation over its seeds; a difference between two rows
is called real only when it exceeds two standard errors of the difference,
``2 * sqrt(sd_a^2 / n_a + sd_b^2 / n_b)`` (rows with one seed have no standard error: their
differences are reported, never called). Writes the markdown (to ``--out``, between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` when the file has them) and two PNG plots
next to the results: hard validation accuracy after every epoch, and hard test accuracy against
model bytes (the Pareto frontier marked).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MAIN_ROWS = ["ours_w3", "seed_w3", "deepshift_w3", "uniform_w3",
             "ours_w3a3", "seed_w3a3", "deepshift_w3a3", "uniform_w3a3", "brevitas_w3a3", "seed_w3a3_long",
             "ours_w2a2", "seed_w2a2", "deepshift_w2a2", "uniform_w2a2", "brevitas_w2a2", "all_w3a3"]
# The targets for our recipe: (row, the most it may lose against the float control, points).
TARGETS = [("ours_w3", 0.1), ("ours_w3a3", 1.0), ("ours_w2a2", 3.0)]
# Our row and the peers it must beat by more than two standard errors of the difference.
RIVALS = {"ours_w3": ["seed_w3", "deepshift_w3", "uniform_w3"],
          "ours_w3a3": ["seed_w3a3", "deepshift_w3a3", "uniform_w3a3", "brevitas_w3a3"],
          "ours_w2a2": ["seed_w2a2", "deepshift_w2a2", "uniform_w2a2", "brevitas_w2a2"]}
MUST_BEAT = ("ours_w3a3", "ours_w2a2")


def load(results_dir: Path) -> dict[str, list[dict]]:
    """Name -> the result of every seed (sorted by seed)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.name != "protocol.json":
            out.setdefault(path.stem, []).append(json.loads(path.read_text()))
    for path in sorted(results_dir.glob("*/seed*.json")):
        out.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    for runs in out.values():
        runs.sort(key=lambda r: r.get("seed", 0))
    return out


def _acc(r: dict) -> float | None:
    return r.get("hard_test_acc", r.get("fp_test_acc"))


def _val(r: dict) -> float | None:
    if "hard_val_acc" in r:
        return r["hard_val_acc"]
    hist = [row.get("hard_acc") for row in r.get("history", []) if row.get("hard_acc") is not None]
    return hist[-1] if hist else None


@dataclass
class Stat:
    """Mean and sample standard deviation, in points (percent), over ``n`` seeds."""

    mean: float
    sd: float | None
    n: int

    @property
    def se(self) -> float | None:
        return None if self.sd is None else self.sd / math.sqrt(self.n)

    def __str__(self) -> str:
        return f"{self.mean:.2f}" + (f" ± {self.sd:.2f}" if self.sd is not None else "")


def stat(values: list[float]) -> Stat | None:
    values = [100 * v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Stat(mean, sd, len(values))


def se_diff(a: Stat, b: Stat) -> float | None:
    """Standard error of ``a.mean - b.mean`` (independent samples); None without two seeds each."""
    if a.sd is None or b.sd is None:
        return None
    return math.sqrt(a.sd**2 / a.n + b.sd**2 / b.n)


def compare(a: Stat, b: Stat) -> tuple[float, float | None, str]:
    """``(a - b, its standard error, verdict)``: ``ahead``/``behind`` beyond two standard errors,
    ``within noise`` inside, ``not enough seeds`` without a standard error."""
    d, se = a.mean - b.mean, se_diff(a, b)
    if se is None:
        return d, None, "not enough seeds"
    if abs(d) > 2 * se:
        return d, se, "ahead" if d > 0 else "behind"
    return d, se, "within noise"


def test_stats(results: dict[str, list[dict]]) -> dict[str, Stat]:
    return {name: s for name, runs in results.items()
            if not any("failed" in r for r in runs) and (s := stat([_acc(r) for r in runs])) is not None}


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    """One line per target: met or missed, with the numbers (points of hard test accuracy, mean
    over seeds); then ours against each peer."""
    stats = test_stats(results)
    control = stats.get("float_control")
    lines = []
    for name, budget in TARGETS:
        runs = results.get(name, [])
        failed = [r for r in runs if "failed" in r]
        if failed:
            lines.append(f"- {name}: diverged in {len(failed)} of {len(runs)} seeds "
                         f"({failed[0]['failed'].split(';')[0]}): **missed**")
            continue
        if control is None or name not in stats:
            lines.append(f"- {name}: not run")
            continue
        s = stats[name]
        lost = control.mean - s.mean
        se = se_diff(control, s)
        noise = f" ± {se:.2f} (SE)" if se is not None else ""
        lines.append(f"- {name}: loses {lost:+.2f}{noise} points against the float control, mean of {s.n} seeds "
                     f"(target <= {budget:g}): " + ("**met**" if lost <= budget else "**missed**"))
    for name, rivals in RIVALS.items():
        if name not in stats:
            continue
        parts, beaten, total, lost = [], 0, 0, 0
        for rival in rivals:
            if rival not in stats:
                continue
            d, se, word = compare(stats[name], stats[rival])
            total += 1
            beaten += word == "ahead"
            lost += word in ("behind", "within noise")
            parts.append(f"{rival} {d:+.2f}" + (f" ± {se:.2f}" if se is not None else "") + f" ({word})")
        if not parts:
            continue
        line = f"- {name} vs " + "; ".join(parts)
        if name in MUST_BEAT:
            line += ": ahead of every peer by more than two standard errors: " + (
                "**met**" if beaten == total == len(rivals) else "**missed**" if lost
                else f"**not decided** ({beaten} of {len(rivals)} peers beaten; the others not run or with one seed)")
        lines.append(line)
    return lines


def tables(results: dict[str, list[dict]], protocol: dict) -> str:
    stats = test_stats(results)
    control = stats.get("float_control")
    base = (results.get("float") or [None])[0]
    control_epoch = _mean([r.get("wall_time_per_epoch_s") for r in results.get("float_control", [])])
    lines = [f"Protocol `{protocol.get('protocol')}`, budget {json.dumps(protocol.get('budget'))}.", ""]
    if base:
        origin = (f"the artifact every run starts from ({protocol.get('artifact', 'benchmarks/artifacts')}), evaluated"
                  if base.get("evaluated_only") else f"from scratch, {base['epochs']} epochs, seed 0")
        lines.append(f"Float model ({origin}): test accuracy "
                     f"**{100 * _acc(base):.2f}%**" + (f"; float control (fine-tuned for the QAT budget, "
                                                       f"{control.n} seeds): **{control}%**." if control else "."))
        lines.append("")
    lines += ["Hard (eps = 0) accuracy, mean ± sample standard deviation over the seeds, in percent; "
              "'lost' is the float control's mean minus the row's, ± the standard error of that difference.", "",
              "| configuration | seeds | hard test acc | lost vs float control | hard val acc | "
              "relaxed test acc (eps) | epochs | model bytes | s/epoch (x float control) |",
              "|---|---|---|---|---|---|---|---|---|"]
    ordered = [n for n in MAIN_ROWS if n in results]
    ordered += sorted(n for n in results if n not in ordered and n not in ("float", "float_control"))
    for name in ordered:
        runs = results[name]
        failed = [r for r in runs if "failed" in r]
        if failed:
            lines.append(f"| {name} | {len(runs)} | failed ({len(failed)} of {len(runs)} seeds): "
                         f"{failed[0]['failed']} | - | - | - | - | - | - |")
            continue
        s = stats[name]
        lost = "-"
        if control is not None:
            se = se_diff(control, s)
            lost = f"{control.mean - s.mean:+.2f}" + (f" ± {se:.2f}" if se is not None else "")
        val = stat([_val(r) for r in runs])
        relaxed = stat([r.get("relaxed_test_acc") for r in runs])
        eps = runs[0].get("eps_final")
        relaxed_txt = f"{relaxed} ({eps:g})" if relaxed and eps is not None else "-"
        per_epoch = _mean([r.get("wall_time_per_epoch_s") for r in runs])
        ratio = f" ({per_epoch / control_epoch:.2f}x)" if control_epoch and per_epoch else ""
        lines.append(f"| {name} | {s.n} | {s} | {lost} | {val if val else '-'} | {relaxed_txt} | "
                     f"{runs[0].get('epochs', '-')} | {runs[0].get('model_bytes', 0):,.0f} | "
                     f"{per_epoch or 0:.0f}{ratio} |")
    lines += ["", "Targets (ours against the float control; ours against the seed recipe, the baselines and "
              "the peers; a difference is called only beyond two standard errors):", "", *verdicts(results)]
    lines += ["", "Commands: `python benchmarks/accuracy.py --protocol PROTOCOL --only NAME`; the exact "
              "overrides of each run are in its result file (`command`)."]
    return "\n".join(lines)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plots(results: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in results.items():
        r = runs[0]
        hist = [(row["epoch"], row["hard_acc"]) for row in r.get("history", []) if "hard_acc" in row]
        if hist and name != "float":
            ax.plot(*zip(*hist), marker="o", label=name)
    ax.set_xlabel("epoch (first seed; hard validation accuracy)")
    paths.append(_finish(plt, fig, ax, out_dir / "accuracy_vs_epoch.png", "hard (eps = 0) validation accuracy"))

    fig, ax = plt.subplots(figsize=(7, 4))
    stats = test_stats(results)
    points = [(runs[0]["model_bytes"], stats[name].mean / 100, name) for name, runs in results.items()
              if name in stats and runs[0].get("model_bytes")]
    for series, marker in (("_w", "o"), ("_wa", "s")):
        pts = sorted((b, a) for b, a, n in points if n.startswith("ours_s") and n.endswith(series))
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
    paths.append(_finish(plt, fig, ax, out_dir / "pareto.png", "hard (eps = 0) test accuracy, mean over seeds"))
    return paths


def _finish(plt, fig, ax, path: Path, ylabel: str) -> Path:
    """The plots' shared legend and grid; saves and closes the figure."""
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
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
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "fmnist-r20-v2"))
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    print(render(Path(args.results), Path(args.out) if args.out else None))


if __name__ == "__main__":
    main()
