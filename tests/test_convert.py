"""quantize_model, set_slope, quantizers, load_float_weights, torch.compile."""
import pytest
import torch
import torchvision
from torch import nn

import shiftquant as sq

BLOCK_CONVS = {f"layer{i}.{j}.conv{k}" for i in range(1, 5) for j in range(2) for k in (1, 2)}


def test_dbssq_preset_quantizes_exactly_the_sixteen_block_convs():
    model = torchvision.models.resnet18(weights=None)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", weight_shift_bits=2, act_shift_bits=2))
    names = {n for n, _ in sq.quantized_layers(model)}
    assert names == BLOCK_CONVS
    assert isinstance(model.conv1, nn.Conv2d) and not isinstance(model.conv1, sq.QuantConv2d)
    assert type(model.fc) is nn.Linear and type(model.layer2[0].downsample[0]) is nn.Conv2d
    # Weights and inputs of each: 32 quantizers.
    assert len(list(sq.quantizers(model))) == 32
    params = sum(m.weight.numel() for _, m in sq.quantized_layers(model))
    assert 0.93 < params / sum(p.numel() for p in model.parameters()) < 0.95


def test_weight_only_recipe_has_no_input_quantizers():
    model = torchvision.models.resnet18(weights=None)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", act_shift_bits=None))
    assert all(m.input_quantizer is None and m.weight_quantizer is not None
               for _, m in sq.quantized_layers(model))


def test_all_preset_and_keep_float_first_match():
    model = torchvision.models.resnet18(weights=None)
    recipe = sq.QuantRecipe.preset("all", keep_float=["conv1", "re:.*downsample.*"])
    sq.quantize_model(model, recipe)
    names = {n for n, _ in sq.quantized_layers(model)}
    assert names == BLOCK_CONVS | {"fc"}


def test_set_slope_reaches_every_quantizer_and_validates():
    model = torchvision.models.resnet18(weights=None)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", act_shift_bits=2))
    assert sq.set_slope(model, 0.25) == 32
    assert {q.eps for _, q in sq.quantizers(model)} == {0.25}
    assert sq.get_slope(model) == 0.25
    with pytest.raises(sq.ConfigError, match="eps"):
        sq.set_slope(model, -0.1)
    assert sq.get_slope(model) == 0.25


def test_selecting_nothing_or_unknown_keep_float_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(sq.ConfigError, match="layers"):
        sq.quantize_model(model, sq.QuantRecipe.preset("dbssq"))
    with pytest.raises(sq.ConfigError, match="keep_float"):
        sq.quantize_model(model, sq.QuantRecipe.preset("all", keep_float=["nope*"]))
    assert type(model[0]) is nn.Linear  # nothing changed


def test_quantizing_twice_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    sq.quantize_model(model, sq.QuantRecipe.preset("all"))
    with pytest.raises(sq.ConfigError, match="model"):
        sq.quantize_model(model, sq.QuantRecipe.preset("all"))


def _quantized_r18(recipe):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    return sq.quantize_model(model, recipe)


@pytest.mark.parametrize("preset", ["dbssq", "shiftquant"])
def test_state_dict_roundtrip_gives_identical_outputs(preset):
    recipe = sq.QuantRecipe.preset(preset, act_shift_bits=2)
    a = _quantized_r18(recipe)
    x = torch.randn(4, 3, 32, 32)
    sq.calibrate(a, [x])
    a.train()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    sq.set_slope(a, 0.5)
    a(x).sum().backward()
    opt.step()  # move weights and learned scales away from their initial values
    torch.manual_seed(123)
    b = _quantized_r18(recipe)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.eval()
        sq.set_slope(m, 0.0)
    assert torch.equal(a(x), b(x))


def test_load_float_weights_reports_added_keys_and_resets_stats():
    float_model = torchvision.models.resnet18(weights=None, num_classes=10)
    qmodel = _quantized_r18(sq.QuantRecipe.preset("dbssq", act_shift_bits=2))
    report = sq.load_float_weights(qmodel, float_model.state_dict())
    assert report.added_keys
    assert all(".weight_quantizer." in k or ".input_quantizer." in k for k in report.added_keys)
    assert "layer1.0.conv1.weight_quantizer.sigma_hat" in report.added_keys
    assert torch.equal(qmodel.layer1[0].conv1.weight, float_model.layer1[0].conv1.weight)
    w = float_model.layer1[0].conv1.weight
    torch.testing.assert_close(qmodel.layer1[0].conv1.weight_quantizer.sigma_hat.flatten(),
                               w.reshape(w.shape[0], -1).std(dim=1))


def test_load_float_weights_refuses_other_architecture_and_changes_nothing():
    qmodel = _quantized_r18(sq.QuantRecipe.preset("dbssq"))
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    other = torchvision.models.resnet34(weights=None, num_classes=10).state_dict()
    with pytest.raises(sq.CheckpointError):
        sq.load_float_weights(qmodel, other)
    wrong_shape = torchvision.models.resnet18(weights=None, num_classes=7).state_dict()
    with pytest.raises(sq.CheckpointError, match="shape"):
        sq.load_float_weights(qmodel, wrong_shape)
    assert all(torch.equal(before[k], v) for k, v in qmodel.state_dict().items())


def test_learned_pot_scales_are_powers_of_two():
    qmodel = _quantized_r18(sq.QuantRecipe.preset("shiftquant", act_shift_bits=2))
    for _, layer in sq.quantized_layers(qmodel):
        _, scale, _ = layer.weight_quantizer.decompose(layer.weight)
        assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))


def test_calibrate_sets_activation_scale_from_data():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    sq.quantize_model(model, sq.QuantRecipe.preset("all", act_shift_bits=2, act_scale="learned_pot",
                                                   act_signed=False, act_zero=True))
    x = 40 * torch.rand(8, 3, 8, 8)
    assert sq.calibrate(model, [(x, None)]) == 2
    first = model[0].input_quantizer
    assert bool(first.calibrated)
    assert 2 ** first.log2_scale.item() >= 8  # inputs reach 40: scale far above the default 1


def test_calibrate_sets_every_activation_grid_of_an_integer_vit():
    """With ``residual_bits``, a ViT's token stream (class token, position embedding, each block's
    branch outputs) and its attention's q, k, v have grids of their own: calibration sets each
    from what it quantizes, as it sets the layers' input grids (they were left at scale 1, and
    the hard model lost about 23 points before training)."""
    import timm

    from shiftquant.quant.scales import ActivationQuantizer

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=28, patch_size=7, depth=2, in_chans=1)
    sq.quantize_model(vit, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    grids = {n: q for n, q in vit.named_modules() if isinstance(q, ActivationQuantizer)}
    assert {"pos_quantizer", "token_quantizer", "blocks.0.attn.qkv_quantizer", "blocks.1.ls2"} <= set(grids)
    sq.calibrate(vit, [8 * torch.randn(16, 1, 28, 28)])
    assert all(bool(q.calibrated) for q in grids.values()), [n for n, q in grids.items() if not q.calibrated]
    assert len({q.log2_scale.item() for q in grids.values()}) > 2  # each from its own values
    # the class token (timm: near 0) starts on the position embedding's grid, not a grid of its own
    assert vit.token_quantizer.log2_scale.item() == vit.pos_quantizer.log2_scale.item()


def test_torch_compile_traces_quantized_resnet18_exactly():
    """Dynamo + AOTAutograd over the whole model (autograd.Function, eps buffer): bitwise equal to
    eager, forward and backward, at every slope, without recompiling when eps changes."""
    torch._dynamo.reset()
    model = _quantized_r18(sq.QuantRecipe.preset("dbssq", act_shift_bits=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager")
    for eps in (1.0, 0.25, 0.0):
        sq.set_slope(model, eps)
        out_c = compiled(x)
        out_c.square().sum().backward()
        grads_c = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        out_e = model(x)
        out_e.square().sum().backward()
        assert torch.equal(out_c, out_e)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads_c, model.parameters()))
        model.zero_grad()


def test_inductor_quantized_block_matches_eager():
    """Inductor-generated kernels: same levels, conv sums within float reordering error."""
    torch._dynamo.reset()
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1))
    sq.quantize_model(block, sq.QuantRecipe.preset("all", act_shift_bits=2)).eval()
    x = torch.randn(2, 8, 12, 12)
    compiled = torch.compile(block)
    for eps in (1.0, 0.25, 0.0):
        sq.set_slope(block, eps)
        torch.testing.assert_close(compiled(x), block(x), atol=1e-4, rtol=1e-4)


def test_calibrate_sets_standardize_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    sq.quantize_model(model, sq.QuantRecipe.preset("all", act_shift_bits=2))
    x = 5 + 2 * torch.randn(16, 3, 10, 10)
    x[:, 1] += 3
    assert sq.calibrate(model, [x[:8], x[8:]]) == 1
    norm = model[0].input_quantizer.norm
    per_channel = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(norm.running_mean, per_channel.mean(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm.running_var, per_channel.var(1), atol=1e-3, rtol=1e-3)


def test_reestimate_batchnorm_replaces_stale_statistics_without_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", layers=["3"], kernel_sizes=None, act_shift_bits=2))
    batches = [torch.randn(8, 2, 7, 7) * 3 + 1 for _ in range(3)]
    sq.calibrate(model, batches)
    sq.set_slope(model, 0.0)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3  # two BatchNorm2d and the standardizing input norm
    for m in norms:
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert sq.reestimate_batchnorm(model, [(b, None) for b in batches]) == 3
    assert model.training and all(m.momentum == 0.1 for m in norms[:1])
    # The first BatchNorm sees the float conv's outputs: its statistics are their average over batches.
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    expected = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    assert all((m.running_mean != 5.0).all() for m in norms)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in model.parameters())
    assert sq.reestimate_batchnorm(model, []) == 0
