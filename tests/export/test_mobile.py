"""Model families (timm / torchvision MobileNets, EfficientNet, ResNet-10t, ViT and DeiT with fused
and matmul attention, a functional-style CNN, a CNN with every kind of padding) export with the
deploy preset at W3A3 and agree with the hard PyTorch model: top-1 agreement 1.0 on generated pixel
images, bit for bit when the bundle says exact; the MobileNets and EfficientNets are integer-only
(0 float MACs); the float ops of the others (LayerNorm, attention, activations called as functions,
...) are listed and the C backend refuses them by name."""
import numpy as np
import pytest
import timm
import torch
import torchvision

import shiftquant as sq
from shiftquant.cli import bundle_summary
from shiftquant.errors import ShiftQuantError
from tests.export.models import FunctionalCNN, PaddedCNN

PIXELS = sq.PixelInput((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FAMILIES = {
    "timm mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050", num_classes=10),
    "timm mobilenetv2_050": lambda: timm.create_model("mobilenetv2_050", num_classes=10),
    "timm efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
    "torchvision mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "functional cnn": FunctionalCNN,
    "padded cnn": PaddedCNN,
    "timm resnet10t": lambda: timm.create_model("resnet10t", num_classes=10),
    "timm vit_tiny_patch16_224": lambda: vit("vit_tiny_patch16_224", fused=True),
    "timm deit_tiny_patch16_224": lambda: vit("deit_tiny_patch16_224", fused=True),
}


def vit(name: str, fused: bool):
    """A small timm ViT at 32 px (patch 4, 2 blocks); ``fused``: scaled_dot_product_attention,
    otherwise timm's q @ k^T, softmax, @ v."""
    model = timm.create_model(name, num_classes=10, img_size=32, patch_size=4, depth=2)
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def exported(name, tmp_path, images: int = 16):
    """The hard model (BatchNorm statistics estimated on the calibration images, as after
    training), its bundle (pixels in) and held-out pixel images."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (32, 3, 32, 32)).astype(np.uint8)
    held_out = rng.integers(0, 256, (images, 3, 32, 32)).astype(np.uint8)
    model = FAMILIES[name]()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: the statistics of the calibration images
    with torch.no_grad():
        model.train()(PIXELS.to_float(calibration))
    model.eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [PIXELS.to_float(calibration)])
    sq.set_slope(model, 0.0)
    path = tmp_path / "model.sqb"
    rt = sq.export(model, path, PIXELS.to_float(calibration[:1]), PIXELS)
    return model, rt, path, held_out


# Ops each family's bundle must hold (its functional calls and activations became these).
HOLDS = {"functional cnn": {"hardswish", "hardsigmoid", "silu", "mul", "cat", "mean", "max_pool2d", "avg_pool2d",
                            "adaptive_avg_pool2d"},
         "timm mobilenetv3_small_050": {"hardswish", "mul", "mean"},  # the Hardsigmoid gate folds
         "timm efficientnet_b0": {"silu", "sigmoid", "mul", "mean"},
         "torchvision mobilenet_v3_small": {"hardswish", "mul", "adaptive_avg_pool2d"},
         "padded cnn": {"pad", "avg_pool2d", "flatten"},
         # QuantAttention: q @ k^T, the shiftmax and attention @ v on integers
         "timm vit_tiny_patch16_224": {"integer_layer_norm", "shiftmax", "matmul", "gelu", "reshape", "permute",
                                       "index", "constant", "expand", "cat"},
         "timm deit_tiny_patch16_224": {"integer_layer_norm", "shiftmax", "matmul"}}
# What runs on integers: every average pool and the pads of the padded CNN, all of ResNet-10t.
INTEGER = {"padded cnn": {"same_pad", "replicate_pad", "pad", "avg_pool2d", "avg_pool2d_1", "add", "add_1"},
           "timm vit_tiny_patch16_224": {"matmul", "blocks_0_attn_shiftmax", "matmul_1", "reshape_1", "blocks_0_norm1",
                                         "cat", "add"}}
INTEGER_ONLY = {"timm resnet10t", "timm mobilenetv2_050", "timm mobilenetv3_small_050", "timm efficientnet_b0",
                "torchvision mobilenet_v3_small", "timm vit_tiny_patch16_224", "timm deit_tiny_patch16_224"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_agrees_with_pytorch(name, tmp_path):
    model, rt, path, images = exported(name, tmp_path)
    with torch.no_grad():
        ref = model(PIXELS.to_float(images)).numpy()
    rt.observed_float_ops.clear()
    out = rt.run(images)
    diff = float(np.abs(out - ref).max())
    print(f"{name}: {len(rt.float_ops)} float ops, exact={rt.manifest['exact']}, max |logit diff| {diff}")
    assert float(np.std(ref)) > 1e-3, "a degenerate model proves nothing"
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    if rt.manifest["exact"]:
        assert diff == 0.0
    assert rt.observed_float_ops == rt.float_ops
    assert HOLDS.get(name, set()) <= {n["op"] for n in rt.nodes}
    # ReLU6 and clamps before a shift layer fold into its thresholds: none is left feeding one.
    for n in rt.nodes:
        if n["op"] == "clamp":
            assert not any(c["op"].startswith("shift_") for c in rt.nodes if n["name"] in c["inputs"]), n["name"]
    if name.startswith("timm") and "vit" not in name and "deit" not in name:
        assert any(c.get("requant") for c in rt.nodes)
    by_name = {n["name"]: n for n in rt.nodes}
    assert all(by_name[n]["dtype"] != "float32" for n in INTEGER.get(name, ())), INTEGER[name]
    assert rt.manifest["integer_only"] == (name in INTEGER_ONLY)
    if name in INTEGER_ONLY:
        macs = bundle_summary(str(path))["macs"]
        # shift-adds, and for attention the integer matmuls of q, k, v and its probabilities
        assert macs["float"] == 0 and macs["shift_add"] + macs["integer"] == macs["total"] and macs["shift_add"] > 0


def test_c_backend_refuses_float_ops_by_name(tmp_path):
    pytest.importorskip("shiftquant.export.c")
    _, rt, path, _ = exported("functional cnn", tmp_path, images=1)
    with pytest.raises(ShiftQuantError) as info:
        sq.load_bundle(path, backend="c")
    message = str(info.value)
    assert any(n in message for n in rt.float_ops), message


def test_new_op_fields_are_validated_at_load(tmp_path):
    """A corrupt field of the new ops is refused at load, naming the node."""
    import copy

    from shiftquant.errors import BundleError
    from shiftquant.export.reference.runtime import Runtime

    _, rt, _, _ = exported("functional cnn", tmp_path, images=1)
    first = lambda m, op: next(n for n in m["nodes"] if n["op"] == op)
    corruptions = {
        "clamp": lambda n: n.update(min=5.0, max=1.0), "silu": lambda n: n.update(inputs=[]),
        "mean": lambda n: n.update(dim=[0]), "cat": lambda n: n.update(dim=0),
        "mul": lambda n: n.update(inputs=n["inputs"][:1]), "hardswish": lambda n: n.update(inputs=n["inputs"] * 2)}
    for op, corrupt in corruptions.items():
        manifest = copy.deepcopy(rt.manifest)
        node = first(manifest, op)
        corrupt(node)
        with pytest.raises(BundleError, match=node["name"]):
            Runtime(manifest, rt.tensors)
    manifest = copy.deepcopy(rt.manifest)
    manifest["nodes"].insert(-1, {**first(manifest, "silu"), "op": "gelu", "name": "g", "approximate": "erf"})
    with pytest.raises(BundleError, match="approximate"):
        Runtime(manifest, rt.tensors)


def test_attention_whose_scores_could_reach_2_24_stays_float_with_its_reason(tmp_path):
    """A W2A4 ViT (patch 3, not ``deploy_exact``): ``q @ k^T`` of 4-bit power-of-two activations
    could reach 2^36 units. The matmuls and the shiftmax stay float, with the reason, and the bundle
    still gives the PyTorch model's logits (it used to refuse to export: "scores beyond 2^25")."""
    from shiftquant.export.graph.reasons import float_reasons

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 3, 30, 30)).astype(np.uint8)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=30, patch_size=3, depth=1).eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=4,
                                                   deploy_exact=False))
    sq.calibrate(model, [PIXELS.to_float(images[:16])])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", PIXELS.to_float(images[:1]), PIXELS)
    scores = next(n for n in rt.nodes if n["op"] == "matmul")
    assert scores["dtype"] == "float32" and scores["name"] in rt.float_ops
    why = {r.node: r.reason for r in float_reasons(rt.manifest)}
    assert "2^24" in why[scores["name"]]
    with torch.no_grad():
        ref = model(PIXELS.to_float(images[16:])).numpy()
    out = rt.run(images[16:])
    assert float(np.std(ref)) > 1e-3 and (out.argmax(1) == ref.argmax(1)).all()
    assert np.allclose(out, ref, atol=1e-4)
