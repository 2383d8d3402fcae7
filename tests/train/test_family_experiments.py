"""The fine-tuning recipes of the model families (issue 13) train, select the layers their configs
name, and export a bundle that agrees with the hard model on (generated) Fashion-MNIST images."""
import numpy as np
import pytest
import torch

from shiftquant import cli
from shiftquant.checkpoint import load_model
from shiftquant.export import load_bundle
from shiftquant.nn.layers import QuantMixin
from shiftquant.train.run import train
from tests.helpers import compose_cfg, make_fashion_mnist

# Generated Fashion-MNIST files (the recipes' data and shapes; the labels are random).
TINY = ["data.train_subset=null", "data.val_size=32", "data.batch_size=32", "float_stage.epochs=1",
        "trainer.max_epochs=1", "calibrate_batches=1", "bn_reestimate.batches=2"]


def _quantized(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}


def _check_selection(name: str, model) -> None:
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    quantized = _quantized(model)
    if name == "fmnist_mobilenetv3_w3a3":
        # Every 1x1 convolution at W3A3; the stem, the depthwise convolutions and the classifier float.
        assert set(quantized) == {n for n, m in convs.items() if m.kernel_size == (1, 1)}
        assert all(m.input_quantizer is not None for m in quantized.values())
        assert any(m.groups == m.in_channels > 1 for n, m in convs.items() if n not in quantized)
        assert "conv_stem" not in quantized and "classifier" not in quantized
    else:
        # Every Linear of the blocks, weight-only; the patch embedding and the head float.
        linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert set(quantized) == {n for n in linears if n.startswith("blocks.")}
        assert len(quantized) == 4 * 4 and "head" not in quantized and "patch_embed.proj" not in quantized


@pytest.mark.parametrize("name", ["fmnist_mobilenetv3_w3a3", "fmnist_vit_w3"])
def test_family_recipe_fine_tunes_and_exports(name, tmp_path, capsys):
    root = make_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)
    results = train(compose_cfg([f"experiment={name}", f"data.root={root}", *TINY], tmp_path / "run"))
    assert results["float_stage_epochs"] == 1 and 0.0 <= results["hard_test_acc"] <= 1.0
    model = load_model(results["checkpoint"])  # the hard model (eps = 0), as deployed
    _check_selection(name, model)
    bundle = tmp_path / "model.sqb"
    assert cli.main(["export", results["checkpoint"], str(bundle)]) == 0
    rt = load_bundle(bundle)
    data = cli.test_set("fashion_mnist", str(root))
    x = torch.stack([data[i][0] for i in range(32)])
    with torch.no_grad():
        ref = model(x).numpy()
    out = rt.run(rt.input_from_float(x.numpy()))
    assert (out.argmax(1) == ref.argmax(1)).all()
    if rt.manifest["exact"]:
        assert np.array_equal(out, ref)
