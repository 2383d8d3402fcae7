"""Arena planning: every intermediate tensor at an offset of one caller-owned buffer.

Tensors that are alive at the same time (from the kernel that writes them to the last that reads
them) never overlap; the output lives in the caller's buffer, not in the arena. An elementwise
kernel (:data:`.program.ELEMENTWISE`) writes its output over an input that dies there when both
have one layout and element size (the pair is placed as one buffer, the kernel marked
``in_place``).
"""
from __future__ import annotations

from .program import ALIGN, ELEMENTWISE, Tensor


LOCAL_SEARCH = 64  # buffers up to which the planner searches past its first orders


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return (a.alias_of is None and b.alias_of is None and a.shape == b.shape and a.border == b.border
            and a.itemsize == b.itemsize and a.constant is None)


def _in_place(kernels: list, life: dict, keep: set) -> dict[int, int]:
    """``{id(output): id(input)}`` for each elementwise kernel that can write over a dying input;
    marks those kernels."""
    over: dict[int, int] = {}
    for i, k in enumerate(kernels):
        if not isinstance(k, ELEMENTWISE) or id(k.output) in keep:
            continue
        for a in k.inputs:
            if id(a) not in keep and life[id(a)][1] == i and _same_layout(a, k.output) \
                    and sum(x is a for x in k.inputs) == 1:
                over[id(k.output)] = id(a)
                k.in_place = True
                break
    return over


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
    # Outputs written over a dying input: one buffer, alive over both lives.
    over = _in_place(kernels, life, {id(input_tensor), id(output)})
    group: dict[int, int] = {}

    def find(key: int) -> int:
        while key in group:
            key = group[key]
        return key

    for out, a in over.items():
        group[out] = find(a)
    members: dict[int, list[Tensor]] = {}
    for key, r in roots.items():
        members.setdefault(find(key), []).append(r)
    for key, rs in members.items():
        if len(rs) > 1:
            life[key] = [min(life[id(r)][0] for r in rs), max(life[id(r)][1] for r in rs)]
    size_of = {key: -(-max(r.nbytes for r in rs) // ALIGN) * ALIGN for key, rs in members.items()}
    heads = [roots[key] for key in members if roots[key] is not output and roots[key].constant is None]
    span = lambda t: life[id(t)][1] - life[id(t)][0]
    orders = [  # TensorFlow Lite Micro's (largest first), by first use, longest lived first: the smallest plan
        sorted(heads, key=lambda t: (-size_of[id(t)], order[id(t)])),
        sorted(heads, key=lambda t: (life[id(t)][0], -size_of[id(t)], order[id(t)])),
        sorted(heads, key=lambda t: (-span(t), -size_of[id(t)], order[id(t)])),
        sorted(heads, key=lambda t: (-span(t) * size_of[id(t)], order[id(t)]))]
    arena, best = min(((_place(o, size_of, life)[0], o) for o in orders), key=lambda plan: plan[0])
    if len(best) <= LOCAL_SEARCH:  # then each buffer tried first, while that makes the arena smaller
        improved = True
        while improved:
            improved = False
            for i in range(1, len(best)):
                trial = [best[i]] + best[:i] + best[i + 1:]
                size = _place(trial, size_of, life)[0]
                if size < arena:
                    arena, best, improved = size, trial, True
    arena, offsets = _place(best, size_of, life)
    for key, offset in offsets.items():
        roots[key].offset = offset
    for key, rs in members.items():
        for r in rs:
            r.offset = roots[key].offset
    return arena


def _place(heads: list, size_of: dict, life: dict) -> tuple[int, dict[int, int]]:
    """Each buffer in turn at the lowest offset free during its life: the arena's size and the offsets."""
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets: dict[int, int] = {}
    arena = 0
    for r in heads:
        first, last = life[id(r)]
        size, offset = size_of[id(r)], 0
        for o, e, f, l in sorted(placed):
            if l < first or f > last:
                continue  # not alive at the same time
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[id(r)] = offset
        placed.append((offset, offset + size, first, last))
        arena = max(arena, offset + size)
    return arena, offsets


