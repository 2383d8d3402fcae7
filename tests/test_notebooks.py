"""The notebooks run top to bottom (small settings), so they never rot."""
import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, tmp_path: Path, env: dict) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_getting_started_runs_and_shows_exact_parity(tmp_path):
    nb = execute("01_getting_started.ipynb", tmp_path, {"SHIFTQUANT_NB_STEPS": "30", "SHIFTQUANT_NB_IMAGES": "32", "SHIFTQUANT_NB_MODEL": "test_resnet"})
    text = outputs(nb)
    assert "runtime == PyTorch, bit for bit: True" in text
    assert "hard (eps = 0)" in text


def test_results_notebook_draws_the_committed_kind_of_results(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "protocol.json").write_text(json.dumps({"protocol": "fmnist-r20", "budget": {"qat_epochs": 2}}))
    base = {"epochs": 2, "wall_time_per_epoch_s": 10.0, "history": [{"epoch": 1, "hard_acc": 0.8}, {"epoch": 2, "hard_acc": 0.85}]}
    (res / "float.json").write_text(json.dumps({**base, "fp_test_acc": 0.9}))
    (res / "float_control.json").write_text(json.dumps({**base, "fp_test_acc": 0.91}))
    for name, acc, size in (("ours_w3", 0.9, 1000), ("ours_s1_w", 0.88, 700), ("seed_w3a3", 0.85, 1000)):
        (res / f"{name}.json").write_text(json.dumps({**base, "hard_test_acc": acc, "relaxed_test_acc": acc,
                                                      "eps_final": 0.0078125, "model_bytes": size}))
    nb = execute("02_results.ipynb", tmp_path, {"SHIFTQUANT_RESULTS": str(res), "SHIFTQUANT_ROOT": str(ROOT)})
    assert "ours_w3" in outputs(nb)
    assert (res / "pareto.png").exists() and (res / "accuracy_vs_epoch.png").exists()
