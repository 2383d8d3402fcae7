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
    (["data.name=mnist"], "data.name='mnist'"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.num_workers=-2"], "data.num_workers=-2"),
    (["data=imagenet"], "data.root='???'"),
    (["data=imagenet", "data.root=/no/such/dir"], "/no/such/dir"),
    (["data=cifar10", "data.root="], "data.root"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
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
    (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
    (["quant.no_such_field=1"], "no_such_field"),          # Hydra refuses unknown keys
    (["trainer.max_epochs=many"], "max_epochs"),             # and wrongly typed ones? (Lightning)
]


def run_in_process(overrides, out_dir, monkeypatch, capsys):
    """``python train.py ...`` inside this process: same Hydra app, same exit path, no start-up cost."""
    import train as entry
    monkeypatch.setattr(sys, "argv", ["train.py", "experiment=quickstart", f"hydra.run.dir={out_dir}",
                                      "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", *overrides])
    with pytest.raises(SystemExit) as info:
        entry.main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_exits_before_data_with_one_message(overrides, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    code, err = run_in_process(overrides, tmp_path / "run", monkeypatch, capsys)
    assert code not in (0, None)
    assert expected in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    # Nothing was trained or written: no checkpoint, no results.
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("overrides,expected", [(["quant.weight_shift_bits=9"], "weight_shift_bits=9"),
                                                (["quant.nope=1"], "nope")])
def test_real_cli_exit_status_and_single_message(overrides, expected, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={tmp_path}",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 8  # one message, no trace
