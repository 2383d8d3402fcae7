"""The benchmark harness itself: quick mode, per-seed result files, resumed runs, progressive
initialization, the Brevitas peer, and the report's mean / standard deviation / two-standard-error
verdicts."""
import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _need_fmnist():
    from shiftquant.data.fashion_mnist import find_root
    if find_root(None) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_quick_protocol_writes_results_and_report(tmp_path, capsys):
    _need_fmnist()
    import accuracy
    import report

    args = ["--protocol", "fmnist-r20-v2", "--quick", "--seeds", "1", "--only", "seed_w3a3", "ours_w2a2",
            "--out", str(tmp_path / "res"), "--artifact", str(tmp_path / "float.safetensors")]
    accuracy.main(args)
    res = tmp_path / "res"
    # ours_w2a2 starts from ours_w3a3 (progressive initialization), which runs first.
    names = {p.parent.name for p in res.glob("*/seed0.json")}
    assert names == {"float", "float_control", "seed_w3a3", "ours_w3a3", "ours_w2a2"}
    assert (tmp_path / "float.safetensors").exists()
    seed = json.loads((res / "seed_w3a3" / "seed0.json").read_text())
    for key in ("hard_test_acc", "hard_val_acc", "relaxed_test_acc", "eps_final", "history", "model_bytes",
                "command", "wall_time_per_epoch_s", "bn_reestimate"):
        assert key in seed, key
    assert 0.0 <= seed["hard_test_acc"] <= 1.0 and seed["model_bytes"] < seed["float_bytes"]
    assert seed["recipe"]["act_standardize_float"] and seed["recipe"]["act_shift_bits"] == 2
    ours = json.loads((res / "ours_w2a2" / "seed0.json").read_text())
    assert any(o.startswith("model.weights=") and "ours_w3a3" in o for o in ours["command"].split())
    assert any(o.startswith("distill.teacher_weights=") and "float_control" in o for o in ours["command"].split())
    assert ours["recipe"]["act_full_codes"] and ours["bn_reestimate"]["batches"] > 0
    # ResNet-20's 18 quantized convs: one input scale each, one weight scale per output channel.
    assert [n for _, n in ours["exponents_moved"].values()] == [6 * (16 + 32 + 64), 18]
    control = json.loads((res / "float_control" / "seed0.json").read_text())
    assert control["recipe"] is None and "model.weights=" in control["command"]
    # A second run finds every (configuration, seed) cached.
    capsys.readouterr()
    accuracy.main(args)
    assert capsys.readouterr().out.count("[cached]") == 5
    out = tmp_path / "BENCH.md"
    out.write_text("# B\n\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
    text = report.render(res, out)
    body = out.read_text()
    assert "| seed_w3a3 | 1 |" in body and "old" not in body and body.endswith("tail\n")
    assert (res / "accuracy_vs_epoch.png").stat().st_size > 1000 and (res / "pareto.png").exists()
    assert "hard test acc" in text and "ours_w2a2: loses" in text


def test_every_protocol_configuration_is_a_valid_config(tmp_path):
    _need_fmnist()
    import accuracy

    from shiftquant.train.run import prepare
    weights = tmp_path / "w.pt"
    import torch
    from shiftquant.models import resnet20
    torch.save(resnet20(num_classes=10, in_chans=1).state_dict(), weights)
    configs = accuracy.configurations()
    peers = {n for n, c in configs.items() if c.peer}
    from peers import brevitas_peer
    if brevitas_peer.available():
        brevitas_peer.register_v2(None)
    else:
        configs = {n: c for n, c in configs.items() if n not in peers}
    base = ["model=resnet20", "data=fashion_mnist", "trainer=cpu", f"model.weights={weights}",
            "float_stage.epochs=0", "trainer.max_epochs=3"]
    for name, cfg in configs.items():
        overrides = base + cfg.overrides
        if cfg.peer:
            overrides = [o for o in overrides if not o.startswith(("model=", "model.weights="))]
        plan = prepare(accuracy.compose(overrides, tmp_path / name))
        assert (plan.recipe is None) == bool(cfg.peer), name
    # The headline rows of issue 12, every seed.
    headline = {n for n, c in accuracy.configurations().items() if c.headline}
    assert headline == {f"{m}_{w}" for m in ("seed", "ours", "deepshift", "uniform", "brevitas")
                        for w in ("w3a3", "w2a2")} | {"ours_w3", "deepshift_w3", "uniform_w3", "ours_w3_no_kd",
                                                    "ours_w3a3_adam_scales", "ours_w2a2_adam_scales"}


def test_selection_adds_the_runs_a_configuration_starts_from():
    import accuracy

    configs = accuracy.configurations()
    only = argparse.Namespace(only=["ours_w2a2_no_kd"], extra=False)
    assert accuracy.selected(only, configs) == ["ours_w3a3", "ours_w2a2_no_kd"]
    default = accuracy.selected(argparse.Namespace(only=None, extra=False), configs)
    assert "all_w3a3" not in default and "ours_w2a2" in default
    assert default.index("ours_w3a3") < default.index("ours_w2a2")


def test_an_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    import accuracy

    from shiftquant.train import run

    seen = {}

    def fake_train(cfg):
        seen["ckpt_path"] = cfg.get("ckpt_path")
        seen["seed"] = cfg.seed
        return {"epochs": 2, "hard_test_acc": 0.5}

    monkeypatch.setattr(run, "train", fake_train)
    res = tmp_path / "res"
    ckpt = run.last_checkpoint_path(res / "runs" / "ours_w3" / "seed2")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"partial")
    r = accuracy.run_one("ours_w3", ["quant=shiftquant"], res, res / "runs", seed=2)
    assert seen == {"ckpt_path": str(ckpt), "seed": 2} and r["resumed"]
    assert json.loads((res / "ours_w3" / "seed2.json").read_text())["hard_test_acc"] == 0.5


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
    assert "nan" in r["failed"] and json.loads((res / "ours_s0_wa" / "seed0.json").read_text())["failed"] == r["failed"]
    text = report.tables(report.load(res), {})
    assert "| ours_s0_wa | 1 | failed (1 of 1 seeds): training loss is nan" in text


def test_report_means_standard_deviations_and_two_standard_error_verdicts():
    import report

    def rows(*accs):
        return [{"seed": i, "hard_test_acc": a} for i, a in enumerate(accs)]

    results = {"float_control": [{"seed": i, "fp_test_acc": a} for i, a in enumerate((0.90, 0.902, 0.898))],
               "ours_w3": rows(0.8995, 0.9005, 0.899),          # loses 0.03: met
               "ours_w3a3": rows(0.885, 0.887, 0.886),          # loses 1.4: missed
               "seed_w3a3": rows(0.850, 0.852, 0.848),          # far behind ours: ours ahead
               "deepshift_w3a3": rows(0.880, 0.895, 0.870),     # noisy: within noise
               "ours_w2a2": rows(0.88, 0.87, 0.875), "brevitas_w2a2": [{"seed": 0, "fp_test_acc": 0.80}]}
    s = report.stat([0.885, 0.887, 0.886])
    assert s.n == 3 and abs(s.mean - 88.6) < 1e-9 and abs(s.sd - 0.1) < 1e-9
    lines = "\n".join(report.verdicts(results))
    assert "ours_w3: loses +0.03 ± 0.12 (SE) points" in lines and "(target <= 0.1): **met**" in lines
    assert "ours_w3a3: loses +1.40 ± 0.13 (SE) points" in lines and "(target <= 1): **missed**" in lines
    assert "ours_w2a2: loses +2.50 ± 0.31 (SE) points" in lines and "(target <= 3): **met**" in lines
    assert "seed_w3a3 +3.60 ± 0.13 (ahead)" in lines
    assert "deepshift_w3a3 +0.43 ± 0.73 (within noise)" in lines
    assert "brevitas_w2a2 +7.50 (not enough seeds)" in lines
    # Beating some peers is not beating every peer; with peers missing nothing is decided.
    assert "(within noise): ahead of every peer by more than two standard errors: **missed**" in lines
    assert "**not decided** (0 of 4 peers beaten" in lines
    text = report.tables(results, {})
    assert "| ours_w3a3 | 3 | 88.60 ± 0.10 | +1.40 ± 0.13 |" in text


def test_brevitas_peer_swaps_the_block_convs_for_its_own_layers():
    from peers import brevitas_peer
    if not brevitas_peer.available():
        pytest.skip('Brevitas not installed (pip install -e ".[peers]")')
    import torch
    from brevitas.nn import QuantConv2d

    from shiftquant.models import resnet20
    model = brevitas_peer.convert(resnet20(num_classes=10, in_chans=1), 2, 2)
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantConv2d)]
    assert len(quantized) == 18 and all(".conv" in n for n in quantized)
    assert isinstance(model.conv1, torch.nn.Conv2d) and not isinstance(model.conv1, QuantConv2d)
    model.train()
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    model.eval()
    codes = model.layer1[0].conv1.quant_weight().int().unique().tolist()
    assert set(codes) <= {-1, 0, 1}
    sizes = brevitas_peer.model_bytes(model)
    assert sizes["model_bytes"] < sizes["float_bytes"] / 4
