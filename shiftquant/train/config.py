"""Compose the Hydra config from ``conf/`` with command-line style overrides, with clear errors.

Hydra answers a mistyped key (``quant.weigth_shift_bits=3``) with advice to append it with ``+``.
:func:`compose_config` answers with the key it probably meant; ``train.py`` runs the same check on
its command line before Hydra starts, so the user sees one line naming the key.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from omegaconf import DictConfig

from ..errors import ConfigError, UnknownKeyError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_BAD_KEY = re.compile(r"Could not override '([^']+)'|Key '([^']+)' is not in struct")


def _keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config (containers and leaves)."""
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}{k}"
            out.append(key)
            try:
                out += _keys(node._get_node(k), key + ".")
            except Exception:  # an interpolation that cannot resolve here
                pass
    return out


def _refuse_key(key: str, overrides: list[str], config_dir: Path, exc: Exception) -> None:
    """Raise the error for an override of ``key`` Hydra could not apply: an unknown key, with the
    closest existing one suggested, or an existing key whose value Hydra could not set."""
    others = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == key]
    try:
        cfg = _compose(others, config_dir)
        keys = _keys(cfg)
    except Exception:
        keys = []
    if key in keys:  # the key exists: the value is what Hydra could not set
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), None)
        raise ConfigError(key, value, f"a value Hydra can set here ({str(exc).splitlines()[0][:200]})") from None
    parent = key.rpartition(".")[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent] or keys
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else \
        f"the keys under `{parent or 'the root'}` are {', '.join(sorted(k.rpartition('.')[2] for k in siblings)[:30])}"
    raise UnknownKeyError(key, f"{hint} (prefix a key with + only to add a new one on purpose)") from None


def _compose(overrides: list[str], config_dir: Path) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app or another compose
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=False)


def compose_config(overrides: list[str], config_dir: str | Path = CONF_DIR) -> DictConfig:
    """The run config for ``overrides``; an unknown key raises :class:`ConfigError` with a
    suggestion."""
    try:
        return _compose(list(overrides), Path(config_dir))
    except Exception as exc:
        match = _BAD_KEY.search(str(exc)) or _BAD_KEY.search(str(exc.__cause__ or ""))
        if match is None:
            raise
        _refuse_key(match.group(1) or match.group(2), list(overrides), Path(config_dir), exc)


def check_command_line(argv: list[str], config_dir: str | Path = CONF_DIR) -> None:
    """Before Hydra starts: refuse an override of a key that does not exist, naming the likely one.

    Sweeps (``-m``) and Hydra's own flags are left to Hydra."""
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.startswith("hydra")]
    try:
        compose_config(overrides, config_dir)
    except ConfigError:
        raise
    except Exception:  # anything else (a sweep, a bad value) is Hydra's or prepare()'s to report
        return


__all__ = ["CONF_DIR", "check_command_line", "compose_config"]
