"""optim.scale_optimizer=adam: Adam steps the learned log2 scales, SGD keeps the weights, one optimizer
for Lightning, the scheduler and checkpoints."""
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import CheckpointError
from shiftquant.train.module import parameter_groups
from shiftquant.train.optimizers import SplitOptimizer, make_optimizer
from tests.quant.test_scales import Block


def _model_and_batch():
    torch.manual_seed(0)
    model = Block(2, False, 4)
    x = torch.relu(torch.randn(8, 4, 6, 6)) * 3
    sq.calibrate(model, [x])
    sq.set_slope(model, 0.0)
    return model, x, torch.randint(0, 3, (8,))


def _step(opt, model, x, y):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_adam_steps_the_scales_by_about_its_rate_and_sgd_steps_the_weights():
    model, x, y = _model_and_batch()
    lr = 0.01
    opt = make_optimizer(parameter_groups(model, lr, 0.0, 1.0), lr, {"name": "sgd", "momentum": 0.9,
                                                                      "scale_optimizer": "adam"})
    assert isinstance(opt, SplitOptimizer) and set(opt.parts) == {"weights", "scales"}
    grads, step = _step(opt, model, x, y)
    scales = [n for n in step if n.endswith("log2_scale")]
    assert len(scales) == 2
    for n, s in step.items():
        if n in scales:  # Adam's first step is lr * sign(grad), whatever the gradient's size
            nonzero = grads[n] != 0
            assert nonzero.any()
            torch.testing.assert_close(s[nonzero], -lr * torch.sign(grads[n][nonzero]), rtol=1e-3, atol=1e-6)
        else:  # SGD (first step: no momentum history, no decay)
            torch.testing.assert_close(s, -lr * grads[n])
    # The tiny LSQ gradient would have moved the scales a hundred times less under SGD.
    assert max(grads[n].abs().max() for n in scales) < lr / 10


def test_one_scheduler_scales_both_and_state_round_trips():
    model, x, y = _model_and_batch()
    opt = make_optimizer(parameter_groups(model, 0.1, 0.0, 2.0), 0.1, {"name": "sgd", "scale_optimizer": "adam"})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    _step(opt, model, x, y)
    sched.step()
    assert [g["lr"] for g in opt.parts["weights"].param_groups] == [pytest.approx(0.05)]
    assert [g["lr"] for g in opt.parts["scales"].param_groups] == [pytest.approx(0.1)]
    state = opt.state_dict()
    assert set(state) == {"weights", "scales"} and state["scales"]["state"]  # Adam's moments are saved
    other = make_optimizer(parameter_groups(model, 0.1, 0.0, 2.0), 0.1, {"name": "sgd", "scale_optimizer": "adam"})
    other.load_state_dict(state)
    for a, b in zip(other.parts["scales"].state.values(), opt.parts["scales"].state.values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
    assert other.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(CheckpointError, match="scale_optimizer differs"):
        other.load_state_dict({"weights": state["weights"]})


def test_without_scales_or_without_the_option_it_is_the_plain_optimizer():
    model, _, _ = _model_and_batch()
    plain = make_optimizer(parameter_groups(model, 0.1, 0.0, 1.0), 0.1, {"name": "sgd"})
    assert type(plain) is torch.optim.SGD
    float_model = nn.Linear(3, 2)
    alone = make_optimizer(parameter_groups(float_model, 0.1, 0.0, 1.0), 0.1, {"name": "adamw", "scale_optimizer": "adam"})
    assert type(alone) is torch.optim.AdamW
