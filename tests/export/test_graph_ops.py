"""The exporter's graph coverage beyond layers: shapes computed in the forward, tensors without a
batch-first layout, constants, padding; and the loader's checks of the new ops' fields."""
import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError, ShiftQuantError
from shiftquant.export.reference.runtime import Runtime

PIXELS = sq.PixelInput((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _export(model, tmp_path, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, size, size)).astype(np.uint8)
    sq.quantize_model(model.eval(), sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [PIXELS.to_float(images)])
    sq.set_slope(model, 0.0)
    return sq.export(model, tmp_path / "m.sqb", PIXELS.to_float(images[:1]), PIXELS), images


class TokenMixer(nn.Module):
    """Tokens as a ViT makes them, mixed by a Linear over ``reshape(B * N, C)``: the batch mixed
    with the tokens, which a bundle cannot keep apart."""

    def __init__(self, merge_batch: bool):
        super().__init__()
        self.merge_batch = merge_batch
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        b, n, c = t.shape
        if self.merge_batch:
            t = self.mix(t.reshape(b * n, c)).reshape(b, n, c)
        else:
            t = self.mix(t.reshape(b, n, c))
        return self.head(t.mean(1))


def test_an_op_that_mixes_the_batch_with_other_dimensions_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ShiftQuantError) as info:
        _export(TokenMixer(merge_batch=True), tmp_path)
    message = str(info.value)
    assert "reshape" in message and "mixes the batch" in message, message
    rt, images = _export(TokenMixer(merge_batch=False), tmp_path)  # the batch kept apart: exports
    assert {"reshape", "permute", "mean"} <= {n["op"] for n in rt.nodes}


def test_the_same_graph_runs_at_any_batch_size(tmp_path):
    """Shapes read in the forward (``B, N, C = x.shape``) are the batch where they are the batch:
    a bundle exported from one example runs batches of 1, 5 and 8 like the model."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    rt, images = _export(model, tmp_path)
    for n in (1, 5, 8):
        with torch.no_grad():
            ref = model(PIXELS.to_float(images[:n])).numpy()
        assert np.array_equal(rt.run(images[:n]), ref)


def test_integer_stream_with_padding_and_pooling_runs_in_c_like_the_reference(tmp_path):
    """ResNet-10t's ceil-mode average-pool downsampling on whole windows is an integer sum: the
    bundle is integer-only and the C backend gives the reference runtime's logits."""
    pytest.importorskip("cffi")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    rt, images = _export(model, tmp_path)
    assert rt.manifest["integer_only"]
    assert [n["integer"] for n in rt.nodes if n["op"] == "avg_pool2d"] == [True] * 3
    with torch.no_grad():
        ref = model(PIXELS.to_float(images)).numpy()
    out = rt.run(images)
    assert np.array_equal(out, ref)
    c = sq.load_bundle(tmp_path / "m.sqb", backend="c")
    assert np.array_equal(c.run(images), out)


def test_c_backend_names_the_integer_moves_it_does_not_implement(tmp_path):
    from tests.export.models import PaddedCNN

    pytest.importorskip("cffi")
    torch.manual_seed(0)
    rt, _ = _export(PaddedCNN(), tmp_path)
    with pytest.raises(ShiftQuantError, match="stem_pad"):  # the first node it cannot run
        sq.load_bundle(tmp_path / "m.sqb", backend="c")


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    model.blocks[0].attn.fused_attn = False
    rt, _ = _export(model, tmp_path_factory.mktemp("vit"))
    return rt


CORRUPTIONS = {
    "reshape": lambda n: n.update(shape=[-1, -1, 4]),
    "permute": lambda n: n.update(dims=[0, 0, 1, 2]),
    "index": lambda n: n.update(index=[[None, None, 0]]),
    "integer_layer_norm": lambda n: n.update(normalized_shape=[7]),
    "shiftmax": lambda n: n.update(unit=0.0),
    "matmul": lambda n: n.update(inputs=n["inputs"][:1]),
    "expand": lambda n: n.update(shape="batch"),
    "constant": lambda n: n.update(batch_dim=0),
    "cat": lambda n: n.update(batch_dim=9),
}


@pytest.mark.parametrize("op", sorted(CORRUPTIONS))
def test_a_corrupt_field_of_a_graph_op_is_refused_at_load_naming_the_node(vit_bundle, op):
    manifest = copy.deepcopy(vit_bundle.manifest)
    node = next(n for n in manifest["nodes"] if n["op"] == op)
    CORRUPTIONS[op](node)
    with pytest.raises(BundleError, match=node["name"]):
        Runtime(manifest, vit_bundle.tensors)


def test_a_corrupt_pad_is_refused_at_load(tmp_path):
    from tests.export.models import PaddedCNN

    torch.manual_seed(0)
    rt, _ = _export(PaddedCNN(), tmp_path)
    for corrupt in (lambda n: n.update(mode="mirror"), lambda n: n.update(pads=[1, 1, 1]),
                    lambda n: n.update(pads=[-1, 1])):
        manifest = copy.deepcopy(rt.manifest)
        node = next(n for n in manifest["nodes"] if n["op"] == "pad")
        corrupt(node)
        with pytest.raises(BundleError, match=node["name"]):
            Runtime(manifest, rt.tensors)


@pytest.mark.parametrize("fused", [True, False])
def test_bundle_summary_counts_attention_macs_like_the_model_summary(tmp_path, fused):
    """`shiftquant summary` of a ViT bundle and `sq.summary` of the model agree MAC for MAC: the
    Linear layers are shift-adds, the attention products of QuantAttention (the deploy preset's,
    whichever path the float model took) integer, and the layers kept float float."""
    from shiftquant.cli import bundle_macs

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    model.blocks[0].attn.fused_attn = fused
    recipe = sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2, keep_float=["head"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    sq.quantize_model(model.eval(), recipe)
    sq.calibrate(model, [PIXELS.to_float(images)])
    rt = sq.export(model, tmp_path / "m.sqb", PIXELS.to_float(images[:1]), PIXELS)
    macs = bundle_macs(rt.manifest, rt.tensors)
    s = sq.summary(model, PIXELS.to_float(images[:1])).to_dict()
    assert s["float_macs"] > 0 and s["shift_add_macs"] > 0 and s["integer_macs"] > 0
    assert (macs["total"], macs["shift_add"], macs["integer"], macs["float"]) \
        == (s["total_macs"], s["shift_add_macs"], s["integer_macs"], s["float_macs"])


def test_a_layer_whose_aligned_integer_output_would_pass_2_24_outputs_float_and_stays_exact(tmp_path):
    """A last Linear whose output channels' grids are 2^4 apart (one channel's weights 16 times
    smaller): its accumulators aligned to the finest channel would reach 2^24, so it hands on
    float values (exact per channel) instead of refusing the export."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)).eval()
    with torch.no_grad():
        model[1].weight[0] *= 1 / 16
        model[1].bias[0] = 0.0  # on any grid
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 3, 8, 8)).astype(np.uint8)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    sq.calibrate(model, [PIXELS.to_float(images)])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", PIXELS.to_float(images[:1]), PIXELS)
    assert rt.nodes[-1]["dtype"] == "float32" and rt.manifest["exact"]
    with torch.no_grad():
        assert np.array_equal(rt.run(images), model(PIXELS.to_float(images)).numpy())
