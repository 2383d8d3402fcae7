"""The options a benchmark protocol needs: how often the test set is read (test=all|final|none),
BatchNorm re-estimation of a quant=none run, an Adam step for the scales that survives a resume,
and the seed's tables read per step."""
import json

import pytest

from shiftquant.errors import ConfigError
from shiftquant.train import run as run_module
from shiftquant.train.run import prepare, train
from shiftquant.train.schedules import SEED_EPS, SEED_LR, build_schedule
from tests.helpers import compose_cfg

FAST = ["experiment=quickstart", "data.train_subset=320", "calibrate_batches=2", "float_stage.epochs=2",
        "trainer.max_epochs=2"]


@pytest.fixture
def test_reads(monkeypatch):
    """Every read of the test split, by the model it read."""
    reads = []
    original = run_module._test_acc

    def counting(trainer, module, dm):
        reads.append(module)
        return original(trainer, module, dm)

    monkeypatch.setattr(run_module, "_test_acc", counting)
    return reads


@pytest.mark.parametrize("reads,expected", [("all", {"fp_test_acc", "relaxed_test_acc", "hard_test_acc"}),
                                            ("final", {"hard_test_acc"}), ("none", set())])
def test_the_test_split_is_read_as_often_as_asked(reads, expected, tmp_path, test_reads):
    results = train(compose_cfg([*FAST, f"test={reads}"], tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {k for k in ("fp_test_acc", "relaxed_test_acc", "hard_test_acc") if k in saved} == expected
    # all: also the best epoch's checkpoint when it is not the final model
    assert len(test_reads) == len(expected) if reads != "all" else len(test_reads) >= 3
    assert saved["test_reads"] == reads and 0 < results["hard_val_acc"] <= 1  # validation always


def test_float_run_reads_the_test_split_once_or_never(tmp_path, test_reads):
    float_run = [*FAST, "quant=none", "schedule=float", "float_stage.epochs=0"]
    results = train(compose_cfg([*float_run, "test=none"], tmp_path / "none"))
    assert "fp_test_acc" not in results and 0 < results["val_acc"] <= 1 and not test_reads
    results = train(compose_cfg([*float_run, "test=final"], tmp_path / "final"))
    assert "fp_test_acc" in results and len(test_reads) == 1


def test_bad_test_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="test.*all, final, none"):
        prepare(compose_cfg(["experiment=quickstart", "test=twice"], tmp_path))


def test_batchnorm_reestimation_of_a_float_run_only_when_asked(tmp_path):
    import torch

    float_run = [*FAST, "quant=none", "schedule=float", "float_stage.epochs=0", "test=none"]
    plain = train(compose_cfg(float_run, tmp_path / "plain"))
    assert "bn_reestimate" not in plain
    asked = train(compose_cfg([*float_run, "bn_reestimate.float_runs=true", "bn_reestimate.batches=3"],
                              tmp_path / "asked"))
    assert asked["bn_reestimate"]["batches"] == 3 and 0 < asked["bn_reestimate"]["val_acc_before"] <= 1

    def tracked(results):
        state = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        return {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}

    assert tracked(asked) == {3}  # the saved statistics are the re-estimated ones (3 batches)
    assert len(tracked(plain)) == 1 and tracked(plain) != {3}  # counted through training
    with pytest.raises(ConfigError, match="bn_reestimate.float_runs"):
        prepare(compose_cfg([*float_run, "bn_reestimate.float_runs=1"], tmp_path / "bad"))


def test_adam_scales_move_exponents_and_resume(tmp_path):
    """The learned input scales move under optim.scale_optimizer=adam (they do not under SGD), and
    a run resumed from its last checkpoint restores both optimizers."""
    common = ["experiment=quickstart", "quant=shiftquant", "quant.weight_scale_frozen=true", "schedule=cosine",
              "data.train_subset=320", "calibrate_batches=2", "float_stage.epochs=2", "test=none"]
    moved = {}
    for opt in ("null", "adam"):
        results = train(compose_cfg([*common, "trainer.max_epochs=3", "optim.scale_lr_mult=100",
                                     f"optim.scale_optimizer={opt}"],
                                    tmp_path / opt))
        moved[opt] = results["exponents_moved"]["input"][0]
    assert moved["null"] == 0 < moved["adam"]
    first = train(compose_cfg([*common, "trainer.max_epochs=1", "optim.scale_optimizer=adam"], tmp_path / "resume"))
    resumed = train(compose_cfg([*common, "trainer.max_epochs=3", "optim.scale_optimizer=adam",
                                 f"ckpt_path={first['checkpoint']}"], tmp_path / "resume"))
    assert resumed["epochs"] == 3 and len(resumed["history"]) >= 2
    with pytest.raises(ConfigError, match="optim.scale_optimizer"):
        prepare(compose_cfg([*common, "optim.scale_optimizer=lion"], tmp_path / "bad"))


def test_seed_tables_per_step_keep_every_entry():
    for table in (SEED_EPS, SEED_LR):
        per_step = build_schedule({"kind": "table", "values": table, "compress": True, "per_step": True},
                                  "schedule.lr", 3, unit_interval=False, non_increasing=False)
        per_epoch = build_schedule({"kind": "table", "values": table, "compress": True},
                                   "schedule.lr", 3, unit_interval=False, non_increasing=False)
        steps = per_step.sample(3, 125)
        assert [steps[i * 25] for i in range(15)] == table  # 375 steps: 25 per entry, in order
        assert steps[-1] == table[-1]
        assert sorted(set(per_epoch.sample(3, 125))) != sorted(set(table))  # per epoch loses entries
    assert sum(v == 1e-2 for v in build_schedule(
        {"kind": "table", "values": SEED_LR, "per_step": True}, "schedule.lr", 3,
        unit_interval=False, non_increasing=False).sample(3, 125)) == 6 * 25
    with pytest.raises(ConfigError, match="schedule.lr.per_step"):
        build_schedule({"kind": "cosine", "per_step": True}, "schedule.lr", 3, unit_interval=False, non_increasing=False)
    with pytest.raises(ConfigError, match="schedule.lr.per_step"):
        build_schedule({"kind": "table", "values": SEED_LR, "per_step": "yes"}, "schedule.lr", 3,
                       unit_interval=False, non_increasing=False)
