"""Run a short training job that SIGKILLs itself halfway through writing its Nth checkpoint.

Usage: python tests/crash_during_save.py N OUT_DIR [overrides...]
"""
import io
import os
import signal
import sys

import torch

from shiftquant.train.run import train
from tests.helpers import compose_cfg

crash_at, out_dir, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_save = torch.save
saves = 0


def dying_save(obj, f, *args, **kwargs):
    global saves
    saves += 1
    if saves < crash_at or not hasattr(f, "write"):
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


torch.save = dying_save
train(compose_cfg(overrides, out_dir))
