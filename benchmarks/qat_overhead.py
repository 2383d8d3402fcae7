"""QAT overhead, measured side by side in one run (this machine is noisy: read the ratios).

(a) forward+backward of ShiftQuantizer(shift_bits=3) on a 32x64x56x56 tensor against a
    hand-unrolled chain of torch.where written the way the seed's code writes it;
(b) one SGD training step of torchvision ResNet-18 at 224 px, batch 16: float vs W3 weight-only vs
    W3A3 (dbssq preset).

    python benchmarks/qat_overhead.py [--repeats 5] [--batch 16] [--size 224] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision

import shiftquant as sq


def seed_style_where_chain(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The seed's formulation for s = 3: one torch.where per level, then the blend, and the
    incoming gradient divided by eps in backward (a tensor hook)."""
    a = x.abs()
    q = torch.where(a > 2**-1, 1.0, torch.where(a > 2**-2, 2**-1, torch.where(
        a > 2**-3, 2**-2, torch.where(a > 2**-4, 2**-3, torch.where(a > 2**-5, 2**-4, torch.where(
            a > 2**-6, 2**-5, torch.where(a > 2**-7, 2**-6, 2**-7)))))))
    q = torch.where(x > 0, q, -q)
    y = eps * x + (1 - eps) * q
    if y.requires_grad:
        y.register_hook(lambda g: g / eps)
    return y


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_quantizer(repeats: int) -> dict:
    x = torch.randn(32, 64, 56, 56, requires_grad=True)
    quant = sq.ShiftQuantizer(3)
    quant.eps = 0.25
    ref_out, ours_out = seed_style_where_chain(x, 0.25), quant(x)
    assert torch.allclose(ref_out, ours_out), "the two formulations disagree"

    def run(f):
        def step():
            x.grad = None
            f(x).sum().backward()
        return step

    seed_t = timeit(run(lambda t: seed_style_where_chain(t, 0.25)), repeats)
    ours_t = timeit(run(quant), repeats)
    return {"seed_where_chain_s": seed_t, "shiftquant_s": ours_t, "speedup": seed_t / ours_t}


def bench_resnet(repeats: int, batch: int, size: int) -> dict:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    variants = {
        "float": None,
        "W3": sq.QuantRecipe.preset("dbssq", weight_shift_bits=2),
        "W3A3": sq.QuantRecipe.preset("dbssq", weight_shift_bits=2, act_shift_bits=2),
    }
    steps = {}
    for name, recipe in variants.items():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
        if recipe is not None:
            sq.quantize_model(model, recipe)
            sq.set_slope(model, 0.25)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        steps[name] = step
    # Interleave the variants so that machine noise hits them alike.
    times = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"step_s": med, "ratio_W3": med["W3"] / med["float"], "ratio_W3A3": med["W3A3"] / med["float"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    q = bench_quantizer(args.repeats)
    print(f"(a) quantizer fwd+bwd, 32x64x56x56, s=3: seed where-chain {q['seed_where_chain_s']*1e3:.1f} ms, "
          f"shiftquant {q['shiftquant_s']*1e3:.1f} ms -> {q['speedup']:.2f}x faster (target >= 3x)")
    r = bench_resnet(args.repeats, args.batch, args.size)
    s = r["step_s"]
    print(f"(b) ResNet-18 train step, batch {args.batch}, {args.size}px: float {s['float']:.3f} s, "
          f"W3 {s['W3']:.3f} s ({r['ratio_W3']:.3f}x, target <= 1.10x), "
          f"W3A3 {s['W3A3']:.3f} s ({r['ratio_W3A3']:.3f}x, target <= 1.25x)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quantizer": q, "resnet18": r, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "batch": args.batch, "size": args.size}, f, indent=2)


if __name__ == "__main__":
    main()
