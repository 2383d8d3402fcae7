"""A bad config fails before any data is read: non-zero exit, one message naming key and value."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (override list, text the message must contain). Each is a distinct way to get a config wrong.
BAD = [
    (["quant.weight_shift_bits=9"], "weight_shift_bits=9"),
    (["quant.weight_shift_bits=-1"], "weight_shift_bits=-1"),
    (["quant.act_shift_bits=7"], "act_shift_bits=7"),
    (["quant.weight_uniform_bits=4"], "weight_uniform_bits=4"),
    (["quant.weight_shift_bits=null", "quant.act_shift_bits=null"], "quantizes nothing"),
    (["quant.weight_rounding=floor"], "weight_rounding='floor'"),
    (["quant.act_rounding=up"], "act_rounding='up'"),
    (["quant.weight_scale=minmax"], "weight_scale='minmax'"),
    (["quant.act_scale=percentile"], "act_scale='percentile'"),
    (["quant.grad=ste"], "grad='ste'"),
    (["quant.clip_sigma=0"], "clip_sigma=0"),
    (["quant.layer_types=[conv3d]"], "layer_types='conv3d'"),
    (["quant.keep_float=[nothing_matches_this]"], "keep_float='nothing_matches_this'"),
    (["quant.layers=[no_such_layer]"], "layers="),
    (["quant.act_signed=false"], "act_signed=False"),
    (["quant.weight_keep_mean=true", "quant.weight_scale=learned_pot"], "weight_keep_mean=True"),
    (["quant.preset=nope"], "preset='nope'"),
    (["model.name=resnet9000"], "model.name='resnet9000'"),
    (["model.weights=/no/such/weights.pt"], "model.weights='/no/such/weights.pt'"),
    (["model.pretrained=true"], "model.pretrained=True"),
    (["+model.options.depth=3"], "model.options={'depth': 3}"),  # resnet_tiny: a fixed architecture
    (["model=timm_vit_tiny", "+model.options.bogus=1"], "model.options="),  # not a constructor argument
    (["data.name=mnist"], "data.name='mnist'"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.num_workers=-2"], "data.num_workers=-2"),
    (["data=imagenet"], "data.root='???'"),
    (["data=imagenet", "data.root=/no/such/dir"], "/no/such/dir"),
    (["data=cifar10", "data.root="], "data.root"),
    (["quant=none", "schedule=float", "float_stage.epochs=0", "trainer.max_epochs=-1"], "trainer.max_epochs=-1"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1"),  # 0: PTQ with a recipe, evaluation without
    (["schedule.eps.values=[1.0,0.5,1.5]"], "schedule.eps=1.5"),
    (["schedule.eps.values=[0.5,1.0]"], "non-increasing"),
    (["schedule.eps.kind=linear"], "schedule.eps.kind='linear'"),
    (["schedule=exponential", "schedule.eps.end=0"], "schedule.eps.end=0"),
    (["schedule.lr.values=[0.1,0.0]"], "schedule.lr=0.0"),
    (["schedule.lr.kind=step"], "schedule.lr.kind='step'"),
    (["schedule.eps.compress=false", "trainer.max_epochs=10"], "schedule.eps.values"),
    (["optim.name=lion"], "optim.name='lion'"),
    (["distill.alpha=2"], "distill.alpha=2"),
    (["distill.temperature=0"], "distill.temperature=0"),
    (["quant=none", "float_stage.epochs=0", "distill.enabled=true"], "distill.enabled=True"),
    (["quant=none", "schedule=float"], "float_stage.epochs=20"),
    (["calibrate_batches=-1"], "calibrate_batches=-1"),
    (["bn_reestimate.batches=-3"], "bn_reestimate.batches=-3"),
    (["+bn_reestimate.every=2"], "bn_reestimate.every"),
    (["quant=shiftquant", "quant.act_signed=true"], "act_full_codes"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
    (["quant.no_such_field=1"], "quant.no_such_field is not a config key"),
    (["quant.weigth_shift_bits=3"], "did you mean `quant.weight_shift_bits`?"),
    (["trainer.max_epoch=3"], "did you mean `trainer.max_epochs`?"),
    (["data=fashion_mnist", "data.root=/nope"], "data.root='/nope' does not hold Fashion-MNIST"),
    (["data.val_size=0"], "data.val_size=0"),
    (["data.test_subset=0"], "data.test_subset=0"),
    (["model.name=torchvision:resnet18", "data=synthetic", "model.pretrained=true"], "model.weights=PATH"),
    (["trainer.accelerator=cpu", "trainer.precision=16-mixed"], "trainer.precision='16-mixed'"),
    (["trainer.max_epochs=many"], "max_epochs"),             # and wrongly typed ones? (Lightning)
    (["threads=0"], "threads=0"),
    (["threads=many"], "threads='many'"),
]


def run_in_process(overrides, out_dir, monkeypatch, capsys):
    """``python train.py ...`` inside this process: same Hydra app, same exit path, no start-up cost."""
    import train as entry
    monkeypatch.setattr(sys, "argv", ["train.py", "experiment=quickstart", f"hydra.run.dir={out_dir}",
                                      "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", *overrides])
    with pytest.raises(SystemExit) as info:
        entry.cli()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_exits_before_data_with_one_message(overrides, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    code, err = run_in_process(overrides, tmp_path / "run", monkeypatch, capsys)
    assert code == 2
    assert expected in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    # Nothing was trained or written: no checkpoint, no results.
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_experiment_on_a_cpu_machine_names_trainer_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code, err = run_in_process(["trainer=gpu"], tmp_path / "run", monkeypatch, capsys)
    assert code == 2 and "trainer.accelerator='gpu'" in err and "trainer=cpu" in err and "Traceback" not in err


@pytest.mark.parametrize("overrides,expected", [(["quant.weight_shift_bits=9"], "weight_shift_bits=9"),
                                                (["quant.weigth_shift_bits=3"], "did you mean `quant.weight_shift_bits`"),
                                                (["model.name=torchvision:resnet18", "data=synthetic",
                                                  "model.pretrained=true"], "model.weights=PATH")])
def test_real_cli_exit_status_and_single_message(overrides, expected, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={tmp_path}",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0]  # one line naming the key
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 8  # no trace


def test_benchmark_with_missing_data_is_one_error_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy
    with pytest.raises(SystemExit) as info:
        accuracy.main(["--protocol", "fmnist-r20-v2", "--quick", "--only", "seed_w3a3", "--out", str(tmp_path / "res"),
                       "--set", "data.root=/nope"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert info.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: data.root='/nope' does not hold Fashion-MNIST")
    assert "Traceback" not in err and not list((tmp_path / "res").glob("*.json"))
