"""Every experiment composes and validates; bad values fail before any data is read."""
import time
from pathlib import Path

import pytest

from shiftquant.errors import ConfigError, DataError, ShiftQuantError
from shiftquant.train.run import prepare
from tests.helpers import CONF, compose_cfg, make_image_folder

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_expected_experiments_exist():
    for name in ["quickstart", "dbssq_r18_w3", "dbssq_r18_w1", "dbssq_r18_w3a3", "dbssq_r18_w4a4_uniform",
                 "dbssq_r18_w1a1", "fmnist_resnet20_fp", "fmnist_resnet20_w3", "fmnist_resnet20_w3a3"]:
        assert name in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name, tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=1)
    cfg = compose_cfg([f"experiment={name}", f"data.root={root}"] if name.startswith("dbssq") else
                      [f"experiment={name}"], tmp_path)
    if cfg.data.name == "fashion_mnist":
        from shiftquant.data.fashion_mnist import find_root
        if find_root(None) is None:
            pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    if cfg.model.get("pretrained"):  # hub weights: offline here, so refused at once, naming model.weights
        started = time.monotonic()
        with pytest.raises(ConfigError, match="model.weights=PATH"):
            prepare(cfg)
        assert time.monotonic() - started < 5
        cfg.model.pretrained = False
    plan = prepare(cfg)
    assert plan.epochs == cfg.trainer.max_epochs
    if cfg.quant.enabled:
        assert plan.recipe is not None
        assert plan.eps(0, plan.epochs) == 1.0 if plan.epochs else name.endswith("_ptq")  # PTQ trains nothing


SEED_RECIPES = {
    "dbssq_r18_w3": (2, None, None, None),
    "dbssq_r18_w1": (None, 1, None, None),
    "dbssq_r18_w3a3": (2, None, 2, None),
    "dbssq_r18_w4a4_uniform": (None, 4, None, 4),
    "dbssq_r18_w1a1": (None, 1, None, 1),
}


@pytest.mark.parametrize("name", sorted(SEED_RECIPES))
def test_seed_experiments_follow_method(name, tmp_path):
    cfg = compose_cfg([f"experiment={name}", "data.root=/nonexistent"], tmp_path)
    q = cfg.quant
    assert (q.weight_shift_bits, q.weight_uniform_bits, q.act_shift_bits, q.act_uniform_bits) == SEED_RECIPES[name]
    assert (q.weight_rounding, q.weight_zero, q.weight_scale, q.act_scale) == ("ceil", False, "pretrained_std", "standardize")
    assert cfg.model.name == "torchvision:resnet18" and cfg.model.pretrained
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 0.0)
    assert cfg.data.batch_size == 256 and cfg.data.augment == "seed" and cfg.trainer.max_epochs == 15
    eps = list(cfg.schedule.eps["values"])
    lr = list(cfg.schedule.lr["values"])
    assert eps == [1, .5, .5, .5, .25, .25, .25, .125, .125, .125, 1 / 16, 1 / 16, 1 / 32, 1 / 64, 1 / 128]
    assert lr == [1e-3] + [1e-2] * 6 + [1e-3] * 8


@pytest.mark.parametrize("override,key", [
    ("quant.weight_shift_bits=9", "weight_shift_bits"),
    ("quant.weight_rounding=floor", "weight_rounding"),
    ("quant.act_scale=minmax", "act_scale"),
    ("model.name=resnet9000", "model.name"),
    ("data.name=mnist", "data.name"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("schedule.lr.kind=step", "schedule.lr.kind"),
    ("schedule.eps.values=[1.0,0.5,2.0]", "schedule.eps"),
    ("schedule.eps.values=[0.5,1.0]", "schedule.eps"),
    ("schedule.lr.values=[0.1,-0.1]", "schedule.lr"),
    ("optim.name=lion", "optim.name"),
    ("optim.scale_lr_mult=0", "optim.scale_lr_mult"),
    ("optim.scale_lr_mult=fast", "optim.scale_lr_mult"),
    ("data.batch_size=0", "data.batch_size"),
    ("model.weights=/no/such/file.pt", "model.weights"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("+schedule.eps.zero_tail=1.0", "schedule.eps.zero_tail"),
    ("+schedule.lr.zero_tail=0.5", "schedule.lr"),
])
def test_bad_values_fail_in_prepare(override, key, tmp_path):
    cfg = compose_cfg(["experiment=quickstart", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare(cfg)


def test_missing_imagenet_root_is_a_data_error(tmp_path):
    cfg = compose_cfg(["experiment=dbssq_r18_w3", f"data.root={tmp_path / 'missing'}"], tmp_path)
    with pytest.raises(DataError, match="train/"):
        prepare(cfg)
    assert issubclass(DataError, ShiftQuantError)
    assert not (Path(tmp_path) / "results.json").exists()


def test_zero_tail_squeezes_the_curve_and_ends_hard():
    from shiftquant.train.schedules import build_schedule

    plain = build_schedule({"kind": "exponential", "start": 1.0, "end": 1 / 128}, "eps", 3,
                           unit_interval=True, non_increasing=True)
    tailed = build_schedule({"kind": "exponential", "start": 1.0, "end": 1 / 128, "zero_tail": 1 / 3}, "eps", 3,
                            unit_interval=True, non_increasing=True)
    for t in (0.0, 0.5, 1.0, 1.9):
        assert tailed(t, 3) == pytest.approx(plain(1.5 * t, 3))
    assert tailed(2.0, 3) == 0.0 and tailed(2.99, 3) == 0.0
    assert plain(2.99, 3) > 0.0


def test_compressed_seed_table_keeps_its_endpoints():
    """Issue 12: on 3 epochs the seed's table is eps (1, 1/8, 1/128), the lr at the same positions."""
    from shiftquant.train.schedules import SEED_EPS, SEED_LR, build_schedule

    def per_epoch(values, total):
        sched = build_schedule({"kind": "table", "values": values}, "schedule.eps", total,
                               unit_interval=False, non_increasing=False)
        return [sched(e + 0.5, total) for e in range(total)]

    assert per_epoch(SEED_EPS, 3) == [1, 1 / 8, 1 / 128]
    assert per_epoch(SEED_LR, 3) == [1e-3, 1e-3, 1e-3]
    assert per_epoch(SEED_EPS, 5) == [1, 1 / 4, 1 / 8, 1 / 16, 1 / 128]
    assert per_epoch(SEED_LR, 5)[1] == 1e-2
    assert per_epoch(SEED_EPS, 15) == SEED_EPS
    assert per_epoch(SEED_EPS, 1) == [1 / 128]
    stretched = per_epoch(SEED_EPS, 30)
    assert stretched[0] == 1 and stretched[-1] == 1 / 128 and sorted(set(stretched)) == sorted(set(SEED_EPS))
