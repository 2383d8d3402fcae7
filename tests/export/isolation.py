"""Crash isolation for the fuzz tests: each case runs in a child forked from this process, which has
imported the package once; a signal, a hang or an exception in the child is an outcome, not a
crash of the test run."""
import os
import pickle
import select
import signal
import time
import traceback

from shiftquant.errors import ShiftQuantError


def run_forked(fn, *args, timeout: float = 120.0):
    """``fn(*args)`` in a forked child. Returns ``("ok", value)``; ``("refused", type, message)`` for
    one of the package's own errors; ``("error", type, traceback)`` for any other exception;
    ``("signal", name)`` when the child died of a signal; ``("timeout", seconds)``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, and leave without running the parent's cleanup
        os.close(read)
        try:
            import torch

            torch.set_num_threads(1)
            outcome = ("ok", fn(*args))
        except ShiftQuantError as exc:
            outcome = ("refused", type(exc).__name__, str(exc)[:500])
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            outcome = ("error", type(exc).__name__, traceback.format_exc()[-3000:])
        data = pickle.dumps(outcome)
        with os.fdopen(write, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(read, "rb") as src:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([src], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("timeout", timeout)
            chunk = os.read(src.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("signal", signal.Signals(os.WTERMSIG(status)).name)
    if not chunks:
        return ("error", "NoReport", f"the child exited with status {os.WEXITSTATUS(status)} and reported nothing")
    return pickle.loads(b"".join(chunks))
