"""The op registry: each op defined once, the loader enforcing every field it declares, and the
bundle documentation generated from the definitions."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError
from shiftquant.export import ops
from shiftquant.export.ops import docs
from shiftquant.export.ops.schema import KINDS
from shiftquant.export.reference.runtime import Runtime

PIXELS = sq.PixelInput((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class Zoo(nn.Module):
    """Many ops in one small graph: convolutions, BatchNorm, pools, activations, arithmetic with
    numbers, padding, a concatenation, a token path (reshape, permute, index, LayerNorm, softmax,
    matmul) and a constant."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(8, 8, 3)
        self.avg = nn.AvgPool2d(2)
        self.norm = nn.LayerNorm(8)
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))  # 16 x 16
        y = F.hardswish(self.conv(F.pad(x, (1, 1, 1, 1))))
        y = torch.cat([y, torch.sigmoid(x) * 2.0], 1)[:, :8]  # 16 x 16
        y = F.gelu(self.avg(y)) - 0.5  # 8 x 8
        t = y.flatten(2).transpose(1, 2)  # (B, 64, 8)
        t = torch.cat([self.token.expand(t.shape[0], -1, -1), t], 1)
        t = self.norm(t.reshape(t.shape[0], 65, 8))
        attn = torch.softmax(t @ t.transpose(1, 2) / 4.0, dim=-1)
        t = torch.clamp(attn @ t, -3.0, 3.0)
        return self.head(F.silu(t[:, 0] + t.mean(1)))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.manual_seed(0)
    model = Zoo().eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [PIXELS.to_float(images)])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path_factory.mktemp("zoo") / "zoo.sqb", PIXELS.to_float(images[:1]), PIXELS)
    with torch.no_grad():
        ref = model(PIXELS.to_float(images)).numpy()
    assert np.array_equal(rt.run(images), ref)  # the graph runs like the model
    return rt


def test_the_zoo_covers_most_of_the_op_set(zoo):
    used = {n["op"] for n in zoo.nodes}
    assert len(used) >= 20 and used <= set(ops.REGISTRY), sorted(used)


def test_every_op_is_one_complete_definition():
    assert len(ops.REGISTRY) >= 34
    for name, d in ops.REGISTRY.items():
        assert d.name == name and d.doc and d.onnx, name
        assert (d.float is None) != (d.run is None), f"{name}: one kernel entry (float kernels, or run)"
        assert (d.integer is None) == (d.prove is None) or d.run is not None, f"{name}: integer kernel and range rule"
        assert all(f.kind in KINDS for f in d.fields), name
        assert len({f.name for f in d.fields}) == len(d.fields), name
        assert d.c is None or d.c == "shift_layer" or callable(d.c), name


def test_docs_bundle_md_is_the_generated_op_reference():
    text = (Path(__file__).parents[2] / "docs" / "bundle.md").read_text()
    start, end = text.index(docs.BEGIN), text.index(docs.END) + len(docs.END)
    assert text[start:end] == docs.markdown(), "regenerate with python -m shiftquant.export.ops.docs"
    for name in ops.REGISTRY:
        assert f"| `{name}` |" in docs.markdown()


def _junk(field) -> object:
    """A value of the wrong type for the field (a choice field gets a string it does not allow)."""
    return {"flag": "yes", "choice": "no such choice"}.get(field.kind, "x")


def test_every_declared_field_is_enforced_at_load(zoo):
    """For every node and every field its op declares: a wrong-typed value is refused at load with
    a BundleError, and so is a required field removed."""
    checked = 0
    for i, node in enumerate(zoo.nodes):
        for field in ops.get(node["op"]).fields:
            if field.name not in node and field.optional:
                continue
            for corrupt in ("junk", "removed"):
                if corrupt == "removed" and field.optional:
                    continue
                manifest = copy.deepcopy(zoo.manifest)
                target = manifest["nodes"][i]
                if corrupt == "junk":
                    target[field.name] = _junk(field)
                else:
                    del target[field.name]
                with pytest.raises(BundleError):
                    Runtime(manifest, zoo.tensors)
                checked += 1
    assert checked >= 60, checked


def test_each_integer_rule_and_range_agree_on_the_zoo(zoo):
    """Every integer node's values lie in the range its op's rule proved (the runtime checks each
    run against the declared range, which holds the proven one)."""
    images = np.random.default_rng(1).integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
    zoo.run(images)
    for node in zoo.nodes:
        fact = zoo.facts[node["name"]]
        if fact.is_int:
            assert node["range"][0] <= fact.lo <= fact.hi <= node["range"][1], node["name"]
