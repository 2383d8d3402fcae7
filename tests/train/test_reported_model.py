"""The accuracy a run prints belongs to the checkpoint it names, and to the bundle exported from it."""
import re

import pytest
import torch

from shiftquant import cli
from shiftquant.export import load_bundle
from shiftquant.train.run import train
from tests.helpers import compose_cfg


@pytest.fixture(scope="module")
def run_with_an_early_best(tmp_path_factory):
    """Digits, deploy preset (exact export), 3 epochs. The checkpoint callback monitors ``val/eps``
    (mode max): eps falls every epoch, so the best epoch is the first, not the last."""
    out = tmp_path_factory.mktemp("early_best")
    results = train(compose_cfg(["experiment=quickstart", "quant=deploy", "quant.act_shift_bits=2",
                                 "float_stage.epochs=4", "trainer.max_epochs=3",
                                 "callbacks.model_checkpoint.monitor=val/eps"], out))
    return out, results


def _bundle_run(checkpoint, bundle, capsys) -> tuple[int, int]:
    """``shiftquant export`` then ``shiftquant run --data digits``: (correct, seen) as printed."""
    assert cli.main(["export", str(checkpoint), str(bundle)]) == 0
    capsys.readouterr()
    assert cli.main(["run", str(bundle), "--data", "digits"]) == 0
    correct, seen = re.search(r"\((\d+)/(\d+)\) on the digits test set", capsys.readouterr().out).groups()
    return int(correct), int(seen)


def test_checkpoint_is_the_final_model_not_the_best_epoch(run_with_an_early_best):
    out, results = run_with_an_early_best
    best = results["best_checkpoint"]
    assert best["monitor"] == "val/eps" and best["epoch"] == 1 and best["score"] == pytest.approx(1.0)
    assert best["path"] != results["checkpoint"]
    final = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    best_saved = torch.load(best["path"], map_location="cpu", weights_only=True)
    steps_per_epoch = best_saved["global_step"]  # the best is epoch 1
    # The final model has every step of the 3 epochs, whatever the monitor says.
    assert steps_per_epoch == 21 and final["global_step"] == 3 * steps_per_epoch
    assert results["split_sizes"] == {"train": 1294, "val": 144, "test": 359, "train_pool": 1294}


def test_exported_checkpoint_scores_exactly_the_printed_hard_accuracy(run_with_an_early_best, tmp_path, capsys):
    _, results = run_with_an_early_best
    correct, seen = _bundle_run(results["checkpoint"], tmp_path / "final.sqb", capsys)
    assert seen == results["split_sizes"]["test"]  # the same images, the same count
    assert correct == round(results["hard_test_acc"] * seen)
    assert load_bundle(tmp_path / "final.sqb").manifest["exact"]


def test_best_checkpoint_scores_its_own_reported_accuracy(run_with_an_early_best, tmp_path, capsys):
    _, results = run_with_an_early_best
    best = results["best_checkpoint"]
    correct, seen = _bundle_run(best["path"], tmp_path / "best.sqb", capsys)
    assert correct == round(best["hard_test_acc"] * seen)


def test_early_stopping_reads_the_validation_split_and_the_final_model_is_reported(tmp_path):
    """eps falls every epoch, so ``val/eps`` (mode max) stops improving after epoch 1: with patience 1
    the run stops after epoch 2, and the reported checkpoint is that epoch's model."""
    results = train(compose_cfg(["experiment=quickstart", "float_stage.epochs=0", "trainer.max_epochs=6",
                                 "data.train_subset=192", "calibrate_batches=1", "callbacks=early_stopping",
                                 "callbacks.early_stopping.monitor=val/eps", "callbacks.early_stopping.patience=1"],
                                tmp_path))
    assert [row["epoch"] for row in results["history"]] == [1, 2]
    assert torch.load(results["checkpoint"], map_location="cpu", weights_only=True)["global_step"] == 2 * 3
