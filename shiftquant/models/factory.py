"""Build classifiers by name and load local weights without executing code.

Names: ``resnet20`` / ``resnet8`` / ``resnet_tiny`` (CIFAR-style, :mod:`resnet_cifar`), ``lenet5`` / ``lenet5_avg`` /
``vgg_small`` (:mod:`plain_cnn`), ``torchvision:NAME``,
``timm:NAME``, or a bare torchvision or timm name (torchvision first).
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, shown
from ..unique_json import safetensors_header
from .plain_cnn import lenet5, lenet5_avg, vgg_small
from .resnet_cifar import resnet8, resnet20, resnet_tiny

LOCAL_MODELS = {"resnet20": resnet20, "resnet8": resnet8, "resnet_tiny": resnet_tiny, "lenet5": lenet5,
                "lenet5_avg": lenet5_avg, "vgg_small": vgg_small}
# Containers in which trainers nest a state_dict, and the prefixes they add to its keys.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("model.", "module.", "_orig_mod.")


def _resolve(name: str) -> tuple[str, str]:
    import timm
    import torchvision

    if name in LOCAL_MODELS:
        return "local", name
    source, _, bare = name.rpartition(":")
    if source not in ("", "torchvision", "timm"):
        raise ConfigError("model.name", name, f"{', '.join(LOCAL_MODELS)}, torchvision:NAME, timm:NAME or a bare name")
    if source in ("", "torchvision") and bare in torchvision.models.list_models(torchvision.models):
        return "torchvision", bare
    if source in ("", "timm") and timm.is_model(bare):
        return "timm", bare
    raise ConfigError("model.name", name,
                      f"{', '.join(LOCAL_MODELS)}, or a torchvision classification / timm model name")


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
        return
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if last.out_features != num_classes:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                nn.Linear(last.in_features, num_classes, bias=last.bias is not None))


def build_model(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                weights: str | None = None, options: dict | None = None) -> nn.Module:
    """A float classifier. ``pretrained`` downloads hub weights; ``weights`` loads a local file;
    ``options`` are keyword arguments of a timm or torchvision constructor (``img_size``,
    ``patch_size``, ``depth`` of a ViT; ``model.options`` in the config)."""
    if pretrained and weights:
        raise ConfigError("model.pretrained", pretrained, "false when model.weights is set (one source of weights)")
    source, bare = _resolve(name)
    if options and source == "local":
        raise ConfigError("model.options", options, f"{{}} for {name} (a fixed architecture)")
    try:
        model = _construct(source, bare, num_classes, in_chans, pretrained, dict(options or {}))
    except TypeError as exc:
        if not options:
            raise
        raise ConfigError("model.options", options, f"keyword arguments that {name} accepts ({exc})") from None
    if weights:
        load_weights(model, weights)
    return model


def _construct(source: str, bare: str, num_classes: int, in_chans: int, pretrained: bool, options: dict) -> nn.Module:
    import timm
    import torchvision

    if source == "local":
        if pretrained:
            raise ConfigError("model.pretrained", True, f"false for {bare} (no hub weights); use model.weights")
        model = LOCAL_MODELS[bare](num_classes=num_classes, in_chans=in_chans)
    elif source == "torchvision":
        if in_chans != 3:
            raise ConfigError("data.channels", in_chans, "3 for torchvision models")
        if pretrained:
            model = torchvision.models.get_model(bare, weights="DEFAULT", **options)
            _replace_head(model, num_classes)
        else:
            model = torchvision.models.get_model(bare, weights=None, num_classes=num_classes, **options)
    else:
        model = timm.create_model(bare, pretrained=pretrained, in_chans=in_chans, **options)
        _replace_head(model, num_classes)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, or a torch file read with ``weights_only=True``.

    Accepts a bare state_dict, a torchvision/timm checkpoint, or a Lightning checkpoint; nested
    containers and the usual key prefixes (``model.``, ``module.``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    from safetensors import SafetensorError
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            with path.open("rb") as f:  # its tensor names once each (safetensors keeps the last of two)
                safetensors_header(f, path.stat().st_size)
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            SafetensorError) as exc:
        raise CheckpointError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}"[:500]) from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict of tensors")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weight file into a float ``model``; refuses (changing nothing) when it does not fit."""
    sd = read_state_dict(path)
    own = model.state_dict()
    # A Lightning checkpoint of a distillation run also holds the teacher: keep the student.
    if not set(sd) <= set(own):
        sd = {k: v for k, v in sd.items() if not k.startswith("teacher.")}
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape  # integers for floats: not weights
             or (own[k].is_floating_point() and not sd[k].is_floating_point())]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys (e.g. {[shown(k) for k in missing[:3]]})")
        if unexpected:  # a file's own names: any length, any characters
            detail.append(f"unexpected {len(unexpected)} keys (e.g. {[shown(k) for k in unexpected[:3]]})")
        if wrong:
            k = sorted(wrong)[0]
            detail.append(f"{k}: expected {tuple(own[k].shape)} {own[k].dtype}, found {tuple(sd[k].shape)} {sd[k].dtype}")
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(detail))
    model.load_state_dict(sd)
