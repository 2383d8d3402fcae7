"""The benchmark harness itself, in quick mode: well-formed result files, cached reruns, a report."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_quick_protocol_writes_results_and_report(tmp_path, capsys):
    from shiftquant.data.fashion_mnist import find_root
    if find_root(None) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    import accuracy
    import report

    args = ["--protocol", "fmnist-r20", "--quick", "--only", "seed_w3a3", "ours_s1_wa",
            "--out", str(tmp_path / "res"), "--artifact", str(tmp_path / "float.safetensors")]
    accuracy.main(args)
    res = tmp_path / "res"
    names = {p.stem for p in res.glob("*.json")}
    assert names == {"protocol", "float", "float_control", "seed_w3a3", "ours_s1_wa"}
    assert (tmp_path / "float.safetensors").exists()
    seed = json.loads((res / "seed_w3a3.json").read_text())
    for key in ("hard_test_acc", "relaxed_test_acc", "eps_final", "history", "model_bytes", "command",
                "wall_time_per_epoch_s"):
        assert key in seed, key
    assert 0.0 <= seed["hard_test_acc"] <= 1.0 and seed["model_bytes"] < seed["float_bytes"]
    control = json.loads((res / "float_control.json").read_text())
    assert control["recipe"] is None and "model.weights=" in control["command"]
    # A second run finds every configuration cached.
    capsys.readouterr()
    accuracy.main(args)
    assert capsys.readouterr().out.count("[cached]") == 4
    out = tmp_path / "BENCH.md"
    out.write_text("# B\n\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
    text = report.render(res, out)
    body = out.read_text()
    assert "| seed_w3a3 |" in body and "old" not in body and body.endswith("tail\n")
    assert (res / "accuracy_vs_epoch.png").stat().st_size > 1000 and (res / "pareto.png").exists()
    assert "hard acc (eps = 0)" in text


def test_every_protocol_configuration_is_a_valid_config(tmp_path):
    from shiftquant.data.fashion_mnist import find_root
    if find_root(None) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    import accuracy

    from shiftquant.train.run import prepare
    weights = tmp_path / "w.pt"
    import torch
    from shiftquant.models import resnet20
    torch.save(resnet20(num_classes=10, in_chans=1).state_dict(), weights)
    base = ["model=resnet20", "data=fashion_mnist", "trainer=cpu", f"model.weights={weights}",
            "float_stage.epochs=0", "trainer.max_epochs=3"]
    for name, overrides in accuracy.configurations().items():
        plan = prepare(accuracy.compose(base + overrides, tmp_path / name))
        assert plan.recipe is not None, name
    assert len(accuracy.configurations()) == 15


def test_a_diverged_configuration_is_recorded_and_reported(tmp_path, monkeypatch):
    import accuracy
    import report

    from shiftquant.train import run
    from shiftquant.train.module import NonFiniteLossError

    def diverge(cfg):
        raise NonFiniteLossError("training loss is nan at epoch 1, batch 3")

    monkeypatch.setattr(run, "train", diverge)
    res = tmp_path / "res"
    res.mkdir()
    r = accuracy.run_one("ours_s0_wa", ["quant=shiftquant"], res, res / "runs")
    assert "nan" in r["failed"] and json.loads((res / "ours_s0_wa.json").read_text())["failed"] == r["failed"]
    text = report.tables(report.load(res), {})
    assert "| ours_s0_wa | failed: training loss is nan" in text


def test_report_states_each_target_met_or_missed():
    import report

    def row(acc):
        return {"hard_test_acc": acc}

    results = {"float_control": {"fp_test_acc": 0.90}, "ours_w3": row(0.8995), "ours_w3a3": row(0.88),
               "seed_w3": row(0.89), "deepshift_w3": row(0.901), "seed_w3a3": row(0.85)}
    lines = "\n".join(report.verdicts(results))
    assert "ours_w3: loses +0.05 points" in lines and "(target <= 0.1): **met**" in lines
    assert "ours_w3a3: loses +2.00 points against the float control (target <= 1): **missed**" in lines
    assert "ours_s1_wa: not run" in lines
    assert "**behind** deepshift_w3 (+0.15)" in lines
    assert "ours_w3a3 vs seed_w3a3: **at least as good as all**" in lines
