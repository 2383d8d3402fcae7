"""Protocol v3's parts: the LSQ peers, Brevitas with MSE quantizers, the tuning grid, the choice made
on validation, Welch's test, and result files without the machine's paths."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
import protocol_v3  # noqa: E402
import report_v3  # noqa: E402
from peers import lsq_peer  # noqa: E402

from shiftquant.models import resnet20  # noqa: E402


def test_lsq_step_size_gradient_is_lsqs():
    """d/ds of round(clip(v/s)) * s: -v/s + round(v/s) inside the range, the clip level outside,
    times g; the value's gradient passes inside the range only."""
    v = torch.tensor([0.26, -0.9, 5.0, -5.0, 0.0], requires_grad=True)
    s = torch.tensor(0.2, requires_grad=True)
    g = 0.37
    lsq_peer.lsq_quantize(v, s, -3, 3, g, pot=False).sum().backward()
    z = v.detach() / 0.2
    inside = (z > -3) & (z < 3)
    expected = torch.where(inside, -z + torch.round(z), torch.clamp(z, -3, 3)).sum() * g
    torch.testing.assert_close(s.grad, expected)
    torch.testing.assert_close(v.grad, inside.float())


def test_lsq_peers_swap_the_block_convs_and_calibrate():
    torch.manual_seed(0)
    batches = [torch.randn(16, 1, 28, 28)]
    for pot in (False, True):
        model = lsq_peer.convert(resnet20(num_classes=10, in_chans=1), 2, 2, batches, pot=pot)
        layers = [m for m in model.modules() if isinstance(m, lsq_peer.LSQConv2d)]
        assert len(layers) == 18
        steps = {float(m.input_step.detach()) for m in layers}
        assert 1.0 not in steps and len(steps) > 1  # from each layer's own inputs
        layer = layers[0]
        w = lsq_peer.lsq_quantize(layer.weight, layer.weight_step, -1, 1, 1.0, pot)
        levels = (w / w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)).detach()
        assert set(levels.unique().tolist()) <= {-1.0, 0.0, 1.0}
        if pot:  # every step size in use is a power of two
            used = w.abs().amax(dim=(1, 2, 3))
            used = used[used > 0]
            torch.testing.assert_close(used, torch.exp2(torch.round(torch.log2(used))))
        out = model(torch.randn(2, 1, 28, 28))
        out.sum().backward()
        assert layer.weight_step.grad is not None and layer.input_step.grad is not None


def test_brevitas_mse_quantizers_keep_more_weights_than_max_based():
    from peers import brevitas_peer
    if not brevitas_peer.available():
        pytest.skip('Brevitas not installed (pip install -e ".[peers]")')
    from brevitas.nn import QuantConv2d

    def zeros(model):
        convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
        return sum(float((m.quant_weight().value == 0).float().mean()) for m in convs) / len(convs)

    torch.manual_seed(0)
    base = resnet20(num_classes=10, in_chans=1)
    for m in base.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    state = base.state_dict()

    def fresh():
        model = resnet20(num_classes=10, in_chans=1)
        model.load_state_dict(state)
        return model

    batches = [torch.randn(16, 1, 28, 28)]
    v2 = brevitas_peer.convert(fresh(), 2, 2)
    mse = brevitas_peer.convert_mse(fresh(), 2, 2, batches)
    assert zeros(mse) < zeros(v2)
    assert mse(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_tuning_grid_gives_every_method_the_same_effort():
    rows = protocol_v3.tuning_rows()
    per_method = {}
    for name in rows:
        method, setting, cand = report_v3._split(name)
        per_method.setdefault(method, set()).add((setting, cand))
    assert set(per_method) == {"ours", "deepshift", "seed", "lsq", "lsqpot", "brevitas"}
    assert {len(v) for v in per_method.values()} == {6}  # 3 candidates x 2 settings each
    assert all("test=" not in " ".join(r.overrides) for r in rows.values())  # the stage sets it
    # The widths are rewritten everywhere: W2A2 rows carry no 3-bit field.
    for name, row in rows.items():
        if "_w2a2__" in name:
            joined = " ".join(row.overrides)
            assert "weight_shift_bits=2" not in joined and "act_uniform_bits=3" not in joined
            assert row.bits in (None, (2, 2))
    assert rows["ours_w2a2__uniform_kd05"].init_from == "ours_w3a3__uniform_kd05"
    assert "schedule.lr.per_step=true" in rows["seed_w3a3__lrx1"].overrides


def _run(val, before=None, **extra):
    r = {"hard_val_acc": val, **extra}
    if before is not None:
        r["bn_reestimate"] = {"hard_val_acc_before": before}
    return r


def test_choice_is_the_best_mean_validation_and_reads_no_test():
    results = {
        "ours_w3a3__a": [_run(0.86), _run(0.87)], "ours_w3a3__b": [_run(0.88), _run(0.84)],
        "ours_w2a2__a": [_run(0.84), _run(0.84)], "ours_w2a2__b": [_run(0.85), _run(0.845)],
        "lsq_w3a3__lr1": [_run(0.80, 0.82), _run(0.80, 0.82)], "lsq_w3a3__lr2": [_run(0.83, 0.84), _run(0.83, 0.84)],
        "lsq_w2a2__lr1": [_run(0.79, 0.80), _run(0.79, 0.80)],
        "deepshift_w3a3__lr1": [_run(0.85, 0.84), _run(0.85, 0.84)],
        "deepshift_w2a2__lr1": [_run(0.83, 0.82), _run(0.83, 0.82)],
        "seed_w3a3__x1": [_run(0.70), _run(0.72)], "seed_w2a2__x1": [_run(0.60), _run(0.62)],
    }
    table, choice = report_v3.tuning(results)
    assert choice["methods"]["ours"] == {"w3a3": "a", "w2a2": "b"}  # the means, not the best seed
    assert choice["methods"]["lsq"]["w3a3"] == "lr2"
    # With or without re-estimation, whichever validated better (ours' runs have no "before": on).
    assert choice["bn_reestimate"] == {"deepshift_w3a3": True, "deepshift_w2a2": True, "lsq_w3a3": False,
                                       "lsq_w2a2": False, "ours_w3a3": True, "ours_w2a2": True}
    assert choice["validation"]["lsq_w3a3"] == 84.0  # lr2 without re-estimation
    assert set(choice["five_seeds"]) == {"ours_w3", "ours_w3a3", "ours_w2a2", "deepshift_w3", "deepshift_w3a3",
                                         "lsq_w3", "lsq_w3a3", "deepshift_w2a2", "lsq_w2a2"}
    assert choice["long"] == ["ours", "deepshift", "seed"]
    assert "**(chosen)**" in table
    real = {"ours": {"w3a3": "uniform_kd05", "w2a2": "pot_kd05"}, "lsq": {"w3a3": "lr0.01", "w2a2": "lr0.003"},
            "deepshift": {"w3a3": "lr0.01", "w2a2": "lr0.01"}, "seed": {"w3a3": "lrx1", "w2a2": "lrx1"}}
    rows = protocol_v3.final_rows({**choice, "methods": real})
    assert set(rows) == {f"{m}_{s}" for m in real for s in ("w3", "w3a3", "w2a2")} | {
        "ours_w3a3_long", "deepshift_w3a3_long", "seed_w3a3_long"}
    assert not any(o.startswith("bn_reestimate") for o in rows["ours_w3a3"].overrides)  # on: the default
    assert "bn_reestimate.batches=0" in rows["lsq_w3"].overrides  # W3 follows W3A3
    assert rows["lsq_w3"].bits == (3, None) and "bn_reestimate.batches=0" in rows["lsq_w3a3"].overrides
    assert rows["ours_w2a2"].seeds == 5 and rows["ours_w2a2"].init_from == "ours_w3a3"


def test_welch_matches_the_formula_and_decides_at_five_percent():
    from scipy import stats

    a, b = [0.861, 0.858, 0.866, 0.860, 0.863], [0.851, 0.853, 0.849]
    d, p = report_v3.welch(a, b)
    ma, mb = sum(a) / 5, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 4
    vb = sum((x - mb) ** 2 for x in b) / 2
    t = (ma - mb) / math.sqrt(va / 5 + vb / 3)
    dof = (va / 5 + vb / 3) ** 2 / ((va / 5) ** 2 / 4 + (vb / 3) ** 2 / 2)
    assert d == pytest.approx(100 * (ma - mb))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert report_v3.verdict(d, p) == "ahead" and report_v3.verdict(-d, p) == "behind"
    assert report_v3.verdict(0.3, 0.06) == "tied" and report_v3.welch([0.8], b)[1] is None


def test_result_files_hold_repository_relative_paths():
    here = str(accuracy.ROOT)
    result = {"checkpoint": f"{here}/benchmarks/results/x/last.ckpt", "overrides": [f"model.weights={here}/a.st"],
              "nested": {"path": f"{here}/b"}, "other": "/elsewhere/c", "n": 3}
    rel = accuracy.repo_relative(result)
    assert here not in json.dumps(rel) and rel["other"] == "/elsewhere/c" and rel["n"] == 3
    assert accuracy.resolve(rel["checkpoint"]) == result["checkpoint"]
    assert accuracy.resolve("/abs/old.ckpt") == "/abs/old.ckpt"  # v2 files keep working


def test_final_table_compares_short_rows_with_the_control_and_not_the_long_ones():
    """A long row (another budget: all training images, 5 epochs) has no control of its budget: its
    difference from the short float control would mean nothing, so the table gives none."""
    runs = lambda *accs: [{"hard_test_acc": a, "hard_val_acc": a} for a in accs]
    results = {"float_control": runs(0.870, 0.871, 0.869), "ours_w3a3": runs(0.860, 0.862, 0.861),
               "ours_w3a3_long": runs(0.875)}
    text = report_v3.final(results, {"methods": {"ours": {}}})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "(p = " in rows["ours_w3a3"] and rows["ours_w3a3"].split(" | ")[3] == "-0.90 (p = 0.000)"
    assert rows["ours_w3a3_long"].split(" | ")[3] == "-"
