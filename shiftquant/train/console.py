"""What a run prints and leaves behind: each line once, the final table in ``train.log`` too, and no
empty run folder after a refused config.

Hydra configures the root logger (the console and the run's ``train.log``). Lightning adds console
handlers of its own to its loggers, so that each of its lines would be printed twice; its lines go
through Hydra's handlers only.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
_NOISE = ("💡 Tip",)  # Lightning's advertisements


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def route_lightning_logs() -> None:
    """Lightning's log lines once, through the root logger's handlers (when the root has any)."""
    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    # A logger's filters see only its own records: the advertisement comes from this one.
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_DropNoise())


def append_to_log_files(text: str) -> None:
    """``text`` appended to every log file of the root logger (the run's ``train.log``), as it is."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.stream.write(text + "\n")
                handler.flush()
            finally:
                handler.release()


def discard_unused_run_dir(out: Path) -> bool:
    """Remove a run folder that holds nothing of the run (Hydra's ``.hydra`` and an empty
    ``train.log`` only): what a config refused before training leaves. Returns whether it did."""
    out = Path(out)
    if not out.is_dir() or not {p.name for p in out.iterdir()} <= {".hydra", "train.log"}:
        return False
    log = out / "train.log"
    if log.exists() and log.stat().st_size > 0:
        return False
    for handler in logging.getLogger().handlers:  # the log file is closed before it goes
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out.resolve():
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)
    return True
