"""Rebuild a trained model from a shiftquant Lightning checkpoint, refusing any other kind of file.

A run's checkpoint carries, under ``hyper_parameters.shiftquant``, what is needed to rebuild its
model without the run's config: the model name, classes, input channels and the recipe. Files are
read with ``weights_only=True``: no code in them is executed.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .convert import quantize_model, set_slope
from .errors import CheckpointError
from .models.factory import build_model
from .recipe import QuantRecipe


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, refused unless it is a shiftquant Lightning checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a shiftquant Lightning checkpoint, found a {type(ckpt).__name__}")
    meta = (ckpt.get("hyper_parameters") or {}).get("shiftquant") if isinstance(ckpt.get("hyper_parameters"), dict) else None
    if not isinstance(meta, dict) or "model" not in meta or not isinstance(ckpt.get("state_dict"), dict):
        found = "a plain state_dict" if all(isinstance(v, torch.Tensor) for v in ckpt.values()) else \
            f"a dict with keys {sorted(ckpt)[:6]}"
        raise CheckpointError(f"{path}: expected a shiftquant Lightning checkpoint (with hyper_parameters.shiftquant "
                              f"and state_dict), found {found}; a float weights file goes to model.weights instead")
    return ckpt


def checkpoint_meta(path: str | Path) -> dict:
    """What the checkpoint says about its model: ``model``, ``num_classes``, ``in_chans``, ``recipe``."""
    return read_checkpoint(path)["hyper_parameters"]["shiftquant"]


def describe_mismatch(meta: dict, model_name: str, recipe: QuantRecipe | None, ignore=()) -> list[str]:
    """How a checkpoint's model differs from the one a config asks for (empty when it fits);
    recipe fields in ``ignore`` are not compared."""
    problems = []
    if meta["model"].get("name") != model_name:
        problems.append(f"model {meta['model'].get('name')!r} (config: {model_name!r})")
    mine = recipe.to_dict() if recipe else None
    theirs = meta.get("recipe")
    if (mine is None) != (theirs is None):
        problems.append(f"recipe {'none' if theirs is None else 'quantized'} (config: {'none' if mine is None else 'quantized'})")
    elif mine is not None:
        theirs = QuantRecipe.from_dict(theirs).to_dict()  # fields added since: their defaults
        fields = [k for k in mine if k not in ignore and mine[k] != theirs.get(k)]
        if fields:
            problems.append("recipe fields " + ", ".join(f"{k}={theirs.get(k)!r} (config: {mine[k]!r})" for k in fields))
    return problems


def load_model(path: str | Path) -> nn.Module:
    """The model of a shiftquant checkpoint: built, converted with its recipe, weights loaded, in
    eval mode; a quantized model is the hard one (eps = 0), the model a run tests and exports."""
    ckpt = read_checkpoint(path)
    meta = ckpt["hyper_parameters"]["shiftquant"]
    model = build_model(meta["model"]["name"], meta["num_classes"], meta["in_chans"],
                        options=meta["model"].get("options"))
    if meta.get("recipe"):
        quantize_model(model, QuantRecipe.from_dict(meta["recipe"]))
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    own = model.state_dict()
    if set(sd) != set(own) or any(own[k].shape != sd[k].shape for k in sd):
        raise CheckpointError(f"{path}: its weights do not fit the model it describes "
                              f"({len(set(own) ^ set(sd))} keys differ)")
    model.load_state_dict(sd)
    if meta.get("recipe"):
        set_slope(model, 0.0)
    return model.eval()
