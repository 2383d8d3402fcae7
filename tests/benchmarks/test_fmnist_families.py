"""The family rows' report: means over seeds, the difference from the float control with its
Welch p-value, and the cost of the integer ops against the same recipe with them in float."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _runs(values):
    return [{"val_acc": v, "test_acc": v, "wall_time_s": 10.0} for v in values]


def test_the_report_compares_with_the_float_control_and_prices_the_integer_ops():
    import fmnist_families
    from scipy.stats import ttest_ind

    rows = {"m": {"integer": _runs([0.80, 0.81, 0.82]), "float": _runs([0.85, 0.86, 0.87]),
                  "pools-float": _runs([0.80, 0.815, 0.83])}}
    text = fmnist_families.report(rows)
    p = ttest_ind([80, 81, 82], [85, 86, 87], equal_var=False).pvalue
    assert f"| `m` | integer | 81.00 ± 1.00 | 81.00 ± 1.00 | -5.00 | {p:.3g} | 10 |" in text
    assert "| `m` | float | 86.00 ± 1.00 | 86.00 ± 1.00 | - | - | 10 |" in text
    assert "`m`: integer ops cost -0.50 points" in text
