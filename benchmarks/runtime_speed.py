"""Images/s of the reference runtime against the float PyTorch model, side by side in one run.

ResNet-20 (Fashion-MNIST shape, 1x28x28), every Conv/Linear quantized with the ``deploy`` recipe
(W3A3, exact parity), batch 1 and 64, on this CPU. No target yet: these numbers set the goal of
the kernel work that follows.

    python benchmarks/runtime_speed.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import shiftquant as sq
from shiftquant.models import resnet20


def images_per_second(fn, batch: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    float_model = resnet20(num_classes=10, in_chans=1).eval()
    qmodel = resnet20(num_classes=10, in_chans=1)
    qmodel.load_state_dict(float_model.state_dict())
    sq.quantize_model(qmodel, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    calib = torch.randn(64, 1, 28, 28)
    sq.calibrate(qmodel, [calib])
    with tempfile.TemporaryDirectory() as tmp:
        rt = sq.export(qmodel.eval(), Path(tmp) / "r20.sqb", calib[:1])
    rows = {}
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28)
        xn = x.numpy()
        with torch.no_grad():
            fp = images_per_second(lambda: float_model(x), batch, args.repeats)
        rt_ips = images_per_second(lambda: rt.run(xn), batch, args.repeats)
        rows[batch] = {"float_pytorch": fp, "runtime": rt_ips, "ratio": rt_ips / fp}
        print(f"batch {batch:>2}: float PyTorch {fp:8.1f} img/s, shift-add runtime {rt_ips:8.1f} img/s "
              f"({rt_ips / fp:.3f}x of float)")
    assert np.isfinite(rt.run(calib[:2].numpy())).all()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"resnet20": rows, "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
