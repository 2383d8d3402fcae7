import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Runs choose their threads from the cores free when they start (threads=auto); the tests fix the
# count, so that runs compared with each other compute alike.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): a worker per core, at most four. Each worker imports
    torch and builds models of its own; four bound the memory a many-core machine would use."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A short quickstart run (seed recipe, W3A3) shared by the export tests."""
    from shiftquant.train.run import train
    from tests.helpers import compose_cfg

    out = tmp_path_factory.mktemp("trained_digits")
    results = train(compose_cfg(["experiment=quickstart", "float_stage.epochs=12", "trainer.max_epochs=6"], out))
    return results
