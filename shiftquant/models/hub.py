"""Can ``model.pretrained=true`` get its weights? Answered before training, in a few seconds.

Hub weights come from a local cache or a download. Offline (``HF_HUB_OFFLINE=1``) or with the
hub unreachable, a run asking for uncached hub weights fails at once with a message naming
``model.weights=PATH`` instead of hanging on the network.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError

CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                  "SHIFTQUANT_OFFLINE"))


def reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _torchvision_source(name: str) -> tuple[bool, str]:
    """``(cached, url)`` of a torchvision model's default weights."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    cached = (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()
    return cached, url


def _timm_source(name: str) -> tuple[bool, str]:
    """``(cached, url)`` of a timm model's default pretrained weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        cached = any(isinstance(try_to_load_from_cache(hub_id.split("@")[0], f), str)
                     for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
        return cached, "https://huggingface.co"
    url = getattr(cfg, "url", None) or "https://huggingface.co"
    import torch
    cached = bool(getattr(cfg, "url", None)) and \
        (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()
    return cached, url


def check_pretrained_available(source: str, name: str) -> None:
    """Raise :class:`ConfigError` for ``model.pretrained`` unless the weights are cached or the hub
    answers; never waits more than :data:`CONNECT_TIMEOUT_S`."""
    cached, url = (_torchvision_source if source == "torchvision" else _timm_source)(name)
    if cached:
        return
    why = "the hub is offline (HF_HUB_OFFLINE)" if _offline() else \
        f"{urlparse(url).hostname} cannot be reached" if not reachable(url) else None
    if why:
        raise ConfigError("model.pretrained", True,
                          f"false with model.weights=PATH (a local state_dict, timm/torchvision checkpoint or "
                          f"safetensors file): {why} and {name}'s weights are not cached")
