"""End-to-end runs of train(cfg) on the embedded digits and on generated image folders."""
import csv
import json
from pathlib import Path

import pytest
import torch

from shiftquant.train.run import train
from tests.helpers import compose_cfg, make_image_folder

FAST_DIGITS = ["data.train_subset=320", "calibrate_batches=2"]


def test_quickstart_reaches_float_accuracy_when_hard(tmp_path):
    results = train(compose_cfg(["experiment=quickstart"], tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("fp_test_acc", "relaxed_test_acc", "hard_test_acc", "eps_final", "recipe", "checkpoint", "history"):
        assert key in saved, key
    assert saved["eps_final"] == 1 / 128
    # BatchNorm statistics re-estimated at eps = 0 before the hard validation and test (issue 12).
    bn = saved["bn_reestimate"]
    assert bn["batches"] > 0 and bn["eps"] == 0.0 and bn["hard_val_acc_after"] == saved["hard_val_acc"]
    assert Path(saved["checkpoint"]).is_file()
    assert results["fp_test_acc"] > 0.9
    assert results["hard_test_acc"] >= results["fp_test_acc"] - 0.03
    # The history records the hard accuracy after every epoch.
    assert len(saved["history"]) == 15 and all("hard_acc" in row for row in saved["history"])


@pytest.mark.parametrize("name", ["dbssq_r18_w3", "dbssq_r18_w1", "dbssq_r18_w3a3",
                                  "dbssq_r18_w4a4_uniform", "dbssq_r18_w1a1"])
def test_seed_resnet18_configs_fast_dev_run(name, tmp_path):
    root = make_image_folder(tmp_path / "imagenet")
    cfg = compose_cfg([f"experiment={name}", f"data.root={root}", "model.pretrained=false",
                       "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
                       "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.fast_dev_run=true"],
                      tmp_path / "run")
    results = train(cfg)
    assert 0.0 <= results["hard_test_acc"] <= 1.0
    assert results["recipe"]["layers"] == [r"re:(.*\.)?layer\d+\.\d+\.conv\d+"]


@pytest.fixture(scope="module")
def float_digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    results = train(compose_cfg(["experiment=quickstart", "quant=none", "schedule=float",
                                 "float_stage.epochs=0", "trainer.max_epochs=6"], out))
    return out, results


def test_finetune_from_local_checkpoint_starts_at_float_accuracy(float_digits_run, tmp_path):
    float_dir, float_results = float_digits_run
    assert float_results["fp_test_acc"] > 0.8
    weights = float_results["checkpoint"]  # a Lightning checkpoint, read as model weights
    cfg = compose_cfg(["experiment=quickstart", "quant=shiftquant", "float_stage.epochs=0",
                       f"model.weights={weights}", "trainer.max_epochs=2"], tmp_path)
    results = train(cfg)
    # Identity at eps = 1: the converted model reproduces the float accuracy before training ...
    assert results["fp_test_acc"] == pytest.approx(float_results["fp_test_acc"])
    float_val_acc = float_results["history"][-1]["acc"]  # the float model on the validation split
    assert results["start_val_acc"] == pytest.approx(float_val_acc)
    # ... and the run's first logged validation metrics are that float starting point.
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    first = next(r for r in rows if r.get("val/acc"))
    assert float(first["val/acc"]) == pytest.approx(float_val_acc)


def test_zero_epochs_without_a_recipe_evaluates_the_loaded_float_model(float_digits_run, tmp_path):
    """``trainer.max_epochs=0`` with ``quant=none``: the weights as loaded, tested and saved as
    the run's checkpoint (how the benchmark reports the float artifact it starts from)."""
    _, float_results = float_digits_run
    results = train(compose_cfg(["experiment=quickstart", "quant=none", "schedule=float", "float_stage.epochs=0",
                                 f"model.weights={float_results['checkpoint']}", "trainer.max_epochs=0"], tmp_path))
    assert results["evaluated_only"] and results["history"] == []
    assert results["fp_test_acc"] == pytest.approx(float_results["fp_test_acc"])
    saved, loaded = _state(results["checkpoint"]), _state(float_results["checkpoint"])
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_after_epoch_one_matches_uninterrupted_run(float_digits_run, tmp_path):
    weights = float_digits_run[1]["checkpoint"]
    common = ["experiment=quickstart", "float_stage.epochs=0", f"model.weights={weights}",
              "trainer.max_epochs=2", "trainer.deterministic=true"] + FAST_DIGITS
    full = train(compose_cfg(common, tmp_path / "full"))
    steps_per_epoch = 5  # 320 samples / batch 64
    train(compose_cfg(common + [f"+trainer.max_steps={steps_per_epoch}"], tmp_path / "part"))
    part_ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert _state(part_ckpt).keys() == _state(full["checkpoint"]).keys()
    resumed = train(compose_cfg(common + [f"ckpt_path={part_ckpt}"], tmp_path / "resumed"))
    a, b = _state(full["checkpoint"]), _state(resumed["checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["hard_test_acc"] == full["hard_test_acc"]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]


def test_ddp_spawn_two_cpu_processes_agree(tmp_path):
    cfg = compose_cfg(["experiment=quickstart", "trainer=ddp_cpu", "float_stage.epochs=0",
                       "trainer.max_epochs=1", "data.train_subset=256", "calibrate_batches=1"], tmp_path)
    results = train(cfg)
    agreement = json.loads((tmp_path / "rank_agreement.json").read_text())
    assert agreement["world_size"] == 2
    assert len(agreement["checksums"]) == 2 and len(set(agreement["checksums"])) == 1
    assert "hard_test_acc" in results


def test_wandb_offline_and_tensorboard_loggers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(["experiment=quickstart", "logger=wandb", "float_stage.epochs=0",
                       "trainer.max_epochs=1"] + FAST_DIGITS, tmp_path)
    train(cfg)
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    cfg = compose_cfg(["experiment=quickstart", "logger=tensorboard", "float_stage.epochs=0",
                       "trainer.max_epochs=1"] + FAST_DIGITS, tmp_path / "tb")
    train(cfg)
    assert list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))


def test_distillation_from_float_teacher(tmp_path):
    cfg = compose_cfg(["experiment=quickstart", "distill.enabled=true", "float_stage.epochs=2",
                       "trainer.max_epochs=1"] + FAST_DIGITS, tmp_path)
    results = train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    kd = [float(r["train/kd"]) for r in rows if r.get("train/kd")]
    assert kd and all(v >= 0 for v in kd)
    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    assert any(k.startswith("teacher.") for k in ckpt["state_dict"])  # resumable with its teacher
