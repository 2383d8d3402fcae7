"""Structured mutations of a bundle, as an attacker who reseals the checksum would make them: field
edits, type swaps, shape and range edits, tensor edits, string payloads and graph edits."""
import copy
import random

import numpy as np

# Strings that would become code, directives or terminal control if they reached C or a console.
PAYLOADS = [
    'x */ __attribute__((constructor)) static void sq_evil(void) { system("touch MARKER"); } /*',
    'x */ #include "/etc/passwd" /*',
    "x // line comment",
    "x ??/ trigraph",
    "back\\slash",
    "new\nline */ int sq_evil_global = 1; /*",
    "\x1b[2J\x1b[31mred",
    "right\u202eleft",
    "é名前",
    "x" * 300,
    "",
    "*/",
    "/*",
]
JUNK = [None, -1, 0, 1, 2, 3.5, -7, 255, 256, 1 << 15, 1 << 16, 1 << 31, 1 << 63, -(1 << 63), 10 ** 30, 1e308,
        float("nan"), float("inf"), -float("inf"), True, False, "x", "int8", "uint8", "float32", "constant", [], {},
        [0], [1, 2], [0, 1], [-1, 1], [1, 1, 1], [[1]], [0, 0], [9, 9], [1 << 20, 1 << 20]]


def _paths(value, prefix=()):
    """Every path to a leaf or container inside ``value`` (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _set(root, path, value):
    for key in path[:-1]:
        root = root[key]
    root[path[-1]] = value


def _get(root, path):
    for key in path:
        root = root[key]
    return root


def _field(m, t, rng):
    node = rng.choice(m["nodes"])
    path = rng.choice([p for p in _paths(node) if p])
    _set(node, path, copy.deepcopy(rng.choice(JUNK)))
    return f"field {node['name']!r}{list(path)}"


def _nudge(m, t, rng):
    """An integer somewhere in a node moved a little or far: sizes, strides, padding, shapes, shifts."""
    node = rng.choice(m["nodes"])
    ints = [p for p in _paths(node) if p and isinstance(_get(node, p), int) and not isinstance(_get(node, p), bool)]
    if not ints:
        return _field(m, t, rng)
    path = rng.choice(ints)
    v = _get(node, path)
    _set(node, path, rng.choice([v + 1, v - 1, v + 2, 2 * v, -v, v + 7, v * 100, 0]))
    return f"nudge {node['name']!r}{list(path)} from {v}"


def _range(m, t, rng):
    """A declared type or range that lies, or an accumulator bound or type that does."""
    node = rng.choice([n for n in m["nodes"] if n.get("range") or n.get("accumulator_bound") is not None]
                      or m["nodes"])
    choice = rng.randrange(4)
    if choice == 0 and node.get("range"):
        lo, hi = node["range"]
        node["range"] = rng.choice([[lo, hi - 1], [lo + 1, hi], [lo, lo], [hi, hi], [lo - 1, hi + 1], [0, 0]])
    elif choice == 1:
        node["dtype"] = rng.choice(["uint8", "int8", "uint16", "int16", "int32", "float32"])
    elif choice == 2 and node.get("accumulator_bound") is not None:
        node["accumulator_bound"] = rng.choice([0, 1, node["accumulator_bound"] // 2, node["accumulator_bound"] - 1])
    elif node.get("accumulator_dtype"):
        node["accumulator_dtype"] = rng.choice(["int8", "int16", "int32"])
    return f"range {node['name']!r}"


def _tensor(m, t, rng):
    key = rng.choice(sorted(t))
    a = t[key]
    choice = rng.randrange(5)
    if choice == 0:
        t[key] = a.reshape(-1)[: max(a.size - rng.randint(1, 3), 0)].copy()
    elif choice == 1:
        t[key] = np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]) if a.size else a
    elif choice == 2:
        t[key] = a.astype(rng.choice([np.int64, np.float32, np.uint8, np.int8, np.float64]))
    elif choice == 3 and np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        t[key] = np.full_like(a, rng.choice([info.max, info.min, 0, -1 if info.min < 0 else 1]))
    elif choice == 3:
        t[key] = np.full_like(a, rng.choice([np.nan, np.inf, -1e30, 0.0]))
    else:
        flat = a.reshape(-1).copy()
        if flat.size:
            i = rng.randrange(flat.size)
            flat[i] = ~flat[i] if np.issubdtype(a.dtype, np.integer) else -flat[i] * 3
        t[key] = flat.reshape(a.shape)
    return f"tensor {key!r}"


def rename(m, old: str, new: str, everywhere: bool = True) -> None:
    """Rename node ``old``: its name, and (``everywhere``) every reference to it."""
    for n in m["nodes"]:
        if n["name"] == old:
            n["name"] = new
        if everywhere:
            n["inputs"] = [new if i == old else i for i in n["inputs"]]
    if everywhere:
        m["outputs"] = [new if o == old else o for o in m["outputs"]]
        m["float_ops"] = [new if o == old else o for o in m.get("float_ops") or []]


def _payload(m, t, rng):
    node = rng.choice(m["nodes"])
    text = rng.choice(PAYLOADS) + str(rng.randrange(1000))
    choice = rng.randrange(3)
    if choice == 0:
        rename(m, node["name"], text, everywhere=rng.random() < 0.8)
    elif choice == 1:
        node["module"] = text
    else:  # a tensor key
        keys = [k for k, v in node.items() if isinstance(v, str) and v in t]
        if keys:
            k = rng.choice(keys)
            t[text] = t.pop(node[k])
            node[k] = text
    return f"payload on {node['name']!r}"


def _graph(m, t, rng):
    nodes = m["nodes"]
    choice = rng.randrange(5)
    i = rng.randrange(len(nodes))
    if choice == 0:
        nodes.insert(rng.randrange(len(nodes) + 1), copy.deepcopy(nodes[i]))
    elif choice == 1:
        del nodes[i]
    elif choice == 2 and i + 1 < len(nodes):
        nodes[i], nodes[i + 1] = nodes[i + 1], nodes[i]
    elif choice == 3 and i > 0:
        nodes[i]["inputs"] = [nodes[rng.randrange(i)]["name"] for _ in nodes[i]["inputs"] or [0]]
    else:
        key = rng.choice(["outputs", "float_ops", "integer_only", "exact", "format", "nodes"])
        m[key] = copy.deepcopy(rng.choice(JUNK + [[nodes[i]["name"]]]))
    return f"graph edit {choice}"


MUTATORS = [_field, _nudge, _range, _tensor, _payload, _graph]


def mutate(manifest: dict, tensors: dict, rng: random.Random):
    """A copy of the bundle with one to three structured mutations: ``(manifest, tensors, what)``."""
    m, t = copy.deepcopy(manifest), dict(tensors)
    what = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            what.append(rng.choice(MUTATORS)(m, t, rng))
        except (KeyError, TypeError, IndexError, AttributeError, ValueError, OverflowError):
            what.append("skipped (an earlier mutation broke the structure it walks)")
    return m, t, "; ".join(what)
