"""Errors are ShiftQuantErrors; files of the wrong kind are refused; runs are deterministic."""
import ast
import json
from pathlib import Path

import pytest
import torch
import torchvision

import shiftquant
import shiftquant.errors as errors
from shiftquant.checkpoint import load_model, read_checkpoint
from shiftquant.errors import CheckpointError, ConfigError, ShiftQuantError
from shiftquant.train.module import NonFiniteLossError
from shiftquant.train.run import prepare, train
from tests.helpers import compose_cfg

PACKAGE = Path(shiftquant.__file__).parent
OURS = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, ShiftQuantError)}
OURS |= {"NonFiniteLossError"}


def test_every_raise_in_the_package_is_a_shiftquant_error():
    assert issubclass(NonFiniteLossError, ShiftQuantError)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = call.id if isinstance(call, ast.Name) else getattr(call, "attr", None)
                if name not in OURS | {"NotImplementedError"}:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} raises {name}")
    assert not offenders, offenders


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat")
    cfg = compose_cfg(["experiment=quickstart", "float_stage.epochs=1", "trainer.max_epochs=1",
                       "data.train_subset=192", "calibrate_batches=1", "trainer.deterministic=true"], out)
    return out, train(cfg)


def test_checkpoint_rebuilds_the_trained_model(qat_run):
    _, results = qat_run
    model = load_model(results["checkpoint"])
    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    assert any(isinstance(m, shiftquant.QuantConv2d) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"model.{k}"])


def test_timm_or_plain_weights_refused_where_a_checkpoint_is_expected(tmp_path):
    path = tmp_path / "timm_style.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="expected a shiftquant Lightning checkpoint"):
        read_checkpoint(path)
    plain = tmp_path / "plain.pt"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    with pytest.raises(CheckpointError, match="found a plain state_dict"):
        load_model(plain)


def test_truncated_checkpoint_refused(qat_run, tmp_path):
    data = Path(qat_run[1]["checkpoint"]).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 100):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_model(bad)


@pytest.mark.parametrize("overrides,found", [
    (["quant.weight_shift_bits=3"], "weight_shift_bits=2 (config: 3)"),
    (["quant=none", "float_stage.epochs=0", "schedule=float"], "recipe quantized (config: none)"),
    (["model=resnet20"], "model 'resnet_tiny' (config: 'resnet20')"),
])
def test_resume_from_a_checkpoint_of_another_run_refused_before_training(qat_run, overrides, found, tmp_path):
    cfg = compose_cfg(["experiment=quickstart", f"ckpt_path={qat_run[1]['checkpoint']}", *overrides], tmp_path)
    with pytest.raises(ConfigError, match="ckpt_path") as info:
        prepare(cfg)
    assert found in str(info.value)


def test_same_seed_same_results(qat_run, tmp_path):
    out, first = qat_run
    cfg = compose_cfg(["experiment=quickstart", "float_stage.epochs=1", "trainer.max_epochs=1",
                       "data.train_subset=192", "calibrate_batches=1", "trainer.deterministic=true"], tmp_path)
    second = train(cfg)
    drop = {"checkpoint", "best_checkpoint", "float_checkpoint", "wall_time_s"}  # paths of each run, and time
    a = {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k not in drop}
    b = {k: v for k, v in json.loads((tmp_path / "results.json").read_text()).items() if k not in drop}
    assert a == b
    assert first["hard_test_acc"] == second["hard_test_acc"]
