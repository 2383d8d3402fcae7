"""Arena planning: every intermediate tensor at an offset of one caller-owned buffer.

Tensors that are alive at the same time (from the kernel that writes them to the last that reads
them) never overlap; the output lives in the caller's buffer, not in the arena.
"""
from __future__ import annotations

from .program import ALIGN, Tensor


def plan_arena(tensors: list, kernels: list, input_tensor, output) -> int:
    """Greedy arena plan: largest tensors first, each at the lowest offset free during its life."""
    order = {id(t): i for i, t in enumerate(tensors)}
    life: dict[int, list[int]] = {}
    roots: dict[int, Tensor] = {}

    def touch(t: Tensor, step: int) -> None:
        r = t.root
        roots[id(r)] = r
        span = life.setdefault(id(r), [step, step])
        span[0], span[1] = min(span[0], step), max(span[1], step)

    touch(input_tensor, -1)
    for i, k in enumerate(kernels):
        for t in k.inputs:
            touch(t, i)
        touch(k.output, i)
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    arena = 0
    for r in sorted(roots.values(), key=lambda t: (-t.nbytes, order[id(t)])):
        if r is output or r.constant is not None:
            continue
        first, last = life[id(r)]
        size = -(-r.nbytes // ALIGN) * ALIGN
        offset = 0
        for o, e, f, l in sorted(placed):
            if l < first or f > last:
                continue  # not alive at the same time
            if offset + size <= o:
                break
            offset = max(offset, e)
        r.offset = offset
        placed.append((offset, offset + size, first, last))
        arena = max(arena, offset + size)
    return arena


