"""Protocol fmnist-r20-v3: every method tuned on validation with the same effort, then tested once.

    python benchmarks/accuracy.py --protocol fmnist-r20-v3 --stage tune    # validation only, 2 seeds
    python benchmarks/report.py --tuning benchmarks/results/fmnist-r20-v3  # the choices, from validation
    python benchmarks/accuracy.py --protocol fmnist-r20-v3 --stage final   # the chosen rows, tested once

**Stage 1, tuning** (``test=none``: no test number exists). Every method gets the same effort: three
candidate configurations at W3A3 and three at W2A2, each trained on the two tuning seeds (100 and
101; the final rows use seeds 0-4, so a choice is never scored on the runs that made it). The
candidates are ours' levers for ours, and a learning-rate grid for each peer. The choice per method
and setting is the candidate, with or without BatchNorm re-estimation at the end (every run
validates before and after it), with the best mean hard validation accuracy (5,000 images, carved
from the training images); a method's W3 row takes its W3A3 choice without the input quantizer. The two peers with the best validation accuracy at each setting get
5 seeds in stage 2, the rest 3.

**Stage 2, final** (``test=final``: the test set is read once per run, for the reported model). The
choice is read from ``CHOICE`` (committed before any stage-2 run; stage 2 refuses to start without
it). Welch's t-test decides every comparison in ``benchmarks/report.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "fmnist-r20-v3"
CHOICE = ROOT / "benchmarks" / "results" / NAME / "choice.json"
TUNE_SEEDS = (100, 101)
FINAL_SEEDS, HEADLINE_SEEDS = 3, 5
# The budget of every fine-tuning run is protocol v2's (4,000 training images, 3 epochs at batch
# 32: 375 steps); the validation split is the whole 5,000 images carved from the training images
# (v2 read a 1,000-image subset of it), read once after training, not after every epoch.
BUDGET = {"float_train_subset": 10000, "float_epochs": 8, "train_subset": 4000, "batch_size": 32,
          "val_subset": None, "test_subset": None, "qat_epochs": 3,
          "long_train_subset": None, "long_qat_epochs": 5, "long_batch_size": 128}
QUICK = {"float_train_subset": 256, "float_epochs": 1, "train_subset": 256, "batch_size": 32,
         "val_subset": 128, "test_subset": 256, "qat_epochs": 1,
         "long_train_subset": 512, "long_qat_epochs": 2, "long_batch_size": 32}
SETTINGS = {"w3a3": (3, 3), "w2a2": (2, 2)}  # tuned; w3 follows w3a3
PEER_LRS = (0.003, 0.01, 0.03)  # each peer's grid: cosine from lr to lr / 100


def lr(start: float) -> list[str]:
    return [f"schedule.lr.start={start}", f"schedule.lr.end={start / 100:g}"]


SHORT_RELAX = ["schedule=exponential", "schedule.eps.zero_tail=0.75", *lr(0.01)]
HARD = ["schedule=float", "schedule.eps.value=0.0"]
ADAM_SCALES = ["optim.scale_optimizer=adam"]  # SGD for the weights, Adam for the log2 scales


@dataclass
class Row:
    """One configuration: Hydra overrides for our pipeline, or a peer's own layers."""

    overrides: list[str]
    teacher: bool = False               # distil from the float control of the same seed
    init_from: str | None = None        # progressive initialization from this row's model
    peer: tuple[str, str] | None = None  # (module in benchmarks/peers, converter function)
    bits: tuple[int, int | None] | None = None  # a peer's (weight bits, input bits)
    long: bool = False
    seeds: int | None = None             # final stage: how many seeds (None: the stage's default)
    candidate: str | None = None         # final stage: the tuning candidate it is


def _codes(method: str, w: int, a: int | None) -> list[str]:
    """Our quantizer's fields for ``w``-bit power-of-two weights (sign + (w - 1)-bit exponent) and
    ``a``-bit inputs: power-of-two codes for ``pot`` inputs, uniform unsigned integers otherwise."""
    inputs = (["quant.act_shift_bits=null", "quant.act_uniform_bits=null"] if a is None else
              [f"quant.act_shift_bits={a - 1}", "quant.act_uniform_bits=null"] if method == "pot" else
              ["quant.act_shift_bits=null", f"quant.act_uniform_bits={a}"])
    return ["quant=shiftquant", f"quant.weight_shift_bits={w - 1}", *inputs]


def ours(inputs: str, kd: float | None, w: int, a: int | None, **kw) -> Row:
    """Ours: power-of-two weights with frozen per-channel scales, ``inputs`` (``pot`` or
    ``uniform``) with a learned power-of-two scale stepped by Adam, distillation at weight ``kd``
    (None: off), the short relaxation, BatchNorm re-estimated."""
    kd_opts = ["distill.enabled=false"] if kd is None else \
        ["distill.enabled=true", f"distill.alpha={kd}", "distill.temperature=4.0"]
    return Row([*_codes(inputs, w, a), "quant.weight_scale_frozen=true", *ADAM_SCALES, *kd_opts, *SHORT_RELAX],
               teacher=kd is not None, **kw)


def deepshift(start: float, w: int, a: int | None, **kw) -> Row:
    """DeepShift-Q style: power-of-two weights and inputs, nearest log rounding, learned scales,
    straight-through from the first step, no distillation."""
    return Row([*_codes("pot", w, a), *HARD, *lr(start)], **kw)


def seed_recipe(mult: float, w: int, a: int | None, **kw) -> Row:
    """The seed recipe (METHOD.md), its eps / lr tables compressed per step (every entry kept), the
    lr table times ``mult``, no BatchNorm re-estimation (the seed has none)."""
    from shiftquant.train.schedules import SEED_LR

    table = "[" + ",".join(f"{v * mult:g}" for v in SEED_LR) + "]"
    return Row(["quant=dbssq", f"quant.weight_shift_bits={w - 1}",
                f"quant.act_shift_bits={a - 1 if a is not None else 'null'}", "quant.act_standardize_float=true",
                "schedule=dbssq", "schedule.eps.per_step=true", "schedule.lr.per_step=true",
                f"schedule.lr.values={table}", "bn_reestimate.batches=0"], **kw)


PEERS = {  # peer row prefix -> (module, converter)
    "lsq": ("lsq_peer", "convert"), "lsqpot": ("lsq_peer", "convert_pot"),
    "brevitas": ("brevitas_peer", "convert_mse"),
}


def peer(prefix: str, start: float, w: int, a: int | None, **kw) -> Row:
    """A peer's own layers, trained by our pipeline as a float model (straight-through), calibrated
    on the run's calibration batches, BatchNorm re-estimated (the report reads validation before
    and after it)."""
    return Row(["quant=none", "schedule=float", *lr(start), "bn_reestimate.float_runs=true"],
               peer=PEERS[prefix], bits=(w, a), **kw)


def candidates() -> dict[str, dict[str, Row]]:
    """Method -> candidate name -> its W3A3 row; the W2A2 row is made by :func:`at`."""
    return {
        "ours": {"uniform_kd05": ours("uniform", 0.5, 3, 3), "pot_kd05": ours("pot", 0.5, 3, 3),
                 "uniform_nokd": ours("uniform", None, 3, 3)},
        "deepshift": {f"lr{s:g}": deepshift(s, 3, 3) for s in PEER_LRS},
        "seed": {f"lrx{m:g}": seed_recipe(m, 3, 3) for m in (0.3, 1.0, 3.0)},
        **{p: {f"lr{s:g}": peer(p, s, 3, 3) for s in PEER_LRS} for p in PEERS},
    }


def at(row: Row, w: int, a: int | None) -> Row:
    """The same configuration at another width: every bit field rewritten."""
    def fix(o: str) -> str:
        key, _, value = o.partition("=")
        if key == "quant.weight_shift_bits":
            return f"{key}={w - 1}"
        if key == "quant.act_shift_bits" and value != "null":
            return f"{key}={a - 1}" if a is not None else f"{key}=null"
        if key == "quant.act_uniform_bits" and value != "null":
            return f"{key}={a}" if a is not None else f"{key}=null"
        return o
    return replace(row, overrides=[fix(o) for o in row.overrides], bits=(w, a) if row.bits else None)


def tuning_rows() -> dict[str, Row]:
    """Every candidate at W3A3 and W2A2: ``METHOD_SETTING__CANDIDATE``. Ours' W2A2 candidates
    start from the same candidate's W3A3 model (progressive initialization, as in v2)."""
    rows: dict[str, Row] = {}
    for method, cands in candidates().items():
        for setting, (w, a) in SETTINGS.items():
            for cand, row in cands.items():
                r = at(row, w, a)
                if method == "ours" and setting == "w2a2":
                    r = replace(r, init_from=f"ours_w3a3__{cand}")
                rows[f"{method}_{setting}__{cand}"] = r
    return rows


def final_rows(choice: dict) -> dict[str, Row]:
    """The chosen rows (``choice["methods"][method][setting] = candidate``), W3 from W3A3, the
    long-budget rows (``choice["long"]``: methods), 5 seeds for ours and the two best peers per
    setting (``choice["five_seeds"]``: row names), BatchNorm re-estimation off where validation was
    better without it (``choice["bn_reestimate"]["METHOD_SETTING"] = false``; W3 follows W3A3)."""
    cands = candidates()
    rows: dict[str, Row] = {}
    for method, picks in choice["methods"].items():
        for setting in ("w3", "w3a3", "w2a2"):
            cand = picks["w3a3" if setting == "w3" else setting]
            w, a = {"w3": (3, None), **SETTINGS}[setting]
            r = at(cands[method][cand], w, a)
            if method == "ours" and setting == "w2a2":
                r = replace(r, init_from="ours_w3a3")
            bn_key = f"{method}_{'w3a3' if setting == 'w3' else setting}"
            if choice.get("bn_reestimate", {}).get(bn_key) is False:  # off: better on validation without it
                r = replace(r, overrides=[o for o in r.overrides if not o.startswith("bn_reestimate.")]
                            + ["bn_reestimate.batches=0"])
            seeds = HEADLINE_SEEDS if f"{method}_{setting}" in choice["five_seeds"] else FINAL_SEEDS
            rows[f"{method}_{setting}"] = replace(r, seeds=seeds, candidate=cand)
    for method in choice["long"]:
        cand = choice["methods"][method]["w3a3"]
        rows[f"{method}_w3a3_long"] = replace(at(cands[method][cand], 3, 3), long=True, seeds=1, candidate=cand)
    return rows


def read_choice() -> dict:
    if not CHOICE.is_file():
        from shiftquant.errors import ConfigError
        raise ConfigError("--stage", "final", f"tune first: {CHOICE.relative_to(ROOT)} (the choice made on "
                          "validation, committed before any test number) does not exist")
    return json.loads(CHOICE.read_text())


def run(args, accuracy) -> None:
    """Stage ``args.stage`` of the protocol; ``accuracy`` is the harness module (run_one, compose...)."""
    from shiftquant.train.run import build_datamodule, prepare

    budget = dict(QUICK if args.quick else BUDGET)
    tag = NAME + ("-quick" if args.quick else "")
    results_dir = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / tag
    stage_dir = results_dir / ("tune" if args.stage == "tune" else "final")
    runs_dir = results_dir / "runs" / args.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    art_tag = "fmnist-r20" + ("-quick" if args.quick else "")
    artifact = Path(args.artifact) if args.artifact else ROOT / "benchmarks" / "artifacts" / f"{art_tag}-float.safetensors"
    if not artifact.is_file():
        from shiftquant.errors import ConfigError
        raise ConfigError("--artifact", str(artifact), "the float model every run starts from (run protocol "
                          "fmnist-r20-v2 once to train it, or pass --artifact)")
    if args.stage == "tune":
        rows, reads = tuning_rows(), "none"
        seeds = {n: len(TUNE_SEEDS) for n in rows}
        seed_list = list(TUNE_SEEDS)
    else:
        choice = read_choice() if not args.quick else quick_choice()
        rows, reads = final_rows(choice), "final"
        seeds = {n: r.seeds or FINAL_SEEDS for n, r in rows.items()}
        seed_list = list(range(HEADLINE_SEEDS))
    if args.only:
        unknown = sorted(set(args.only) - set(rows))
        if unknown:
            from shiftquant.errors import ConfigError
            raise ConfigError("--only", unknown, "names of this stage: " + ", ".join(rows))
        wanted = set(args.only)
        for n in list(wanted):  # the rows they start from
            dep = rows[n].init_from
            while dep:
                wanted.add(dep)
                dep = rows[dep].init_from
        rows = {n: r for n, r in rows.items() if n in wanted}
    if args.seeds is not None:
        seed_list = seed_list[: args.seeds]

    def data(seed: int, subset) -> list[str]:
        null = accuracy._null
        return ["model=resnet20", "data=fashion_mnist", "trainer=cpu", "data.num_workers=0",
                f"data.train_subset={null(subset)}", f"data.val_subset={null(budget['val_subset'])}",
                f"data.test_subset={null(budget['test_subset'])}", f"seed={seed}", f"test={reads}",
                f"trainer.check_val_every_n_epoch={budget['long_qat_epochs'] + 1}",  # validate once, at the end
                *accuracy.COMMON, *args.set]

    def start(seed: int, long: bool = False) -> list[str]:
        return accuracy.start_overrides(budget, data, artifact, seed, long)

    prepare(accuracy.compose(start(seed_list[0]) + ["quant=none", "schedule=float"], runs_dir / "check"))
    (results_dir / f"protocol-{args.stage}.json").write_text(json.dumps(
        {"protocol": NAME, "stage": args.stage, "budget": budget, "seeds": seed_list, "test": reads,
         "rows": {n: {"overrides": r.overrides, "seeds": seeds[n], "peer": r.peer, "bits": r.bits,
                      "init_from": r.init_from, "long": r.long} for n, r in rows.items()},
         "artifact": accuracy.repo_relative(str(artifact))}, indent=2))

    controls: dict[int, dict] = {}

    def control(seed: int) -> dict:
        if seed not in controls:
            controls[seed] = accuracy.run_one("float_control", start(seed) + ["quant=none", "schedule=float", *lr(0.01)],
                                              stage_dir, runs_dir, seed=seed, need_checkpoint=True)
        return controls[seed]

    def one(name: str, seed: int) -> dict:
        row = rows[name]
        overrides = start(seed, row.long) + row.overrides
        if row.teacher:
            overrides.append(f"distill.teacher_weights={accuracy.resolve(control(seed)['checkpoint'])}")
        if row.init_from:
            src = accuracy.run_one(row.init_from, start(seed) + rows[row.init_from].overrides + (
                [f"distill.teacher_weights={accuracy.resolve(control(seed)['checkpoint'])}"]
                if rows[row.init_from].teacher else []), stage_dir, runs_dir, seed=seed, need_checkpoint=True)
            if "failed" in src:
                print(f"[skipped] {name} seed {seed}: {row.init_from} failed")
                return {}
            init = accuracy.float_part(accuracy.resolve(src["checkpoint"]),
                                       runs_dir / row.init_from / f"seed{seed}" / "float_part.safetensors")
            overrides = [o for o in overrides if not o.startswith("model.weights=")] + [f"model.weights={init}"]
        peer_module = None
        if row.peer:
            import importlib

            from peers import register
            module, fn = row.peer
            peer_module = importlib.import_module(f"peers.{module}")
            from omegaconf import OmegaConf

            data_cfg = OmegaConf.to_container(accuracy.compose(overrides, runs_dir / "check").data, resolve=True)
            dm = build_datamodule(data_cfg, seed)
            model_name = register(name.split("_")[0], getattr(peer_module, fn), *row.bits, artifact,
                                  dm.calibration_batches(4))
            overrides = [o for o in overrides if not o.startswith(("model=", "model.weights="))]
            overrides = [f"model.name={model_name}", *overrides]
        return accuracy.run_one(name, overrides, stage_dir, runs_dir, seed=seed, peer=peer_module)

    for seed in seed_list:  # seed by seed: an early stop leaves complete seeds behind
        control(seed)
        for name, row in rows.items():
            if not row.long and seed_list.index(seed) < seeds[name]:
                one(name, seed)
    for name, row in rows.items():
        if row.long:
            one(name, seed_list[0])


def quick_choice() -> dict:
    """A stand-in choice for ``--quick`` smoke runs of stage 2 (the first candidate everywhere)."""
    cands = candidates()
    return {"methods": {m: {s: next(iter(c)) for s in SETTINGS} for m, c in cands.items()},
            "five_seeds": ["ours_w3a3"], "long": ["ours"]}
