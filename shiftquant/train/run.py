"""``train(cfg)``: the whole run behind ``python train.py``.

1. :func:`prepare` validates every part of the config and builds what needs no data (recipe,
   schedules, data module, model name). A bad value raises here, before any data is read.
2. Optional float stage (``float_stage.epochs > 0``): train the float model first.
3. With a recipe: measure the float model (``fp_test_acc``, with ``test=all``), keep a frozen teacher when
   distilling, convert, calibrate learned activation scales, validate the starting point.
4. Main stage: ``trainer.max_epochs`` epochs with the slope and learning-rate schedules.
5. Test at the final slope (``relaxed_test_acc``, with ``test=all``); then at eps = 0 re-estimate the BatchNorm
   statistics (``bn_reestimate.batches`` training batches, no gradient; the final checkpoint is
   rewritten with them), validate the hard model (``hard_val_acc``) and test it (``hard_test_acc``)
   on the test set, once, at the end (unless ``test=none``); write ``results.json`` in the run
   directory. ``test=final`` reads the test set exactly once: the reported model.

Validation (the monitors, the best checkpoint, the per-epoch history) reads the validation split,
carved out of the training images; the test set is read only by the final evaluations. The
``checkpoint`` in ``results.json`` is the final model, the one whose accuracy the run reports (the
run checks the file's weights against it); ``best_checkpoint`` is the best epoch by the validation
metric, with that metric and its own test accuracy.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import checkpoint_meta, describe_mismatch
from ..convert import (calibrate, exponents_moved, quantize_model, reestimate_batchnorm, scale_exponents,
                       select_layers, set_slope)
from ..data import DATAMODULES, ImageDataModule
from ..data.base import describe_splits
from ..errors import CheckpointError, ConfigError, ShiftQuantError
from ..models.factory import _resolve, build_model
from ..models.hub import check_pretrained_available
from ..recipe import QuantRecipe
from .callbacks import AtomicCheckpointIO, LastCheckpoint, MetricHistory, RankAgreement, ReleaseProcessGroup, state_checksum
from .module import OPTIMIZERS, ClassifierModule, frozen_copy
from .optimizers import SCALE_OPTIMIZERS
from .schedules import Schedule, build_schedule
from .threads import check_threads, choose_threads


log = logging.getLogger(__name__)
GPU_ACCELERATORS = ("gpu", "cuda")
# Which models a run tests: every one it makes (the float start, the relaxed and the hard model, the
# best epoch), only the reported one, or none (tuning decides on validation, before test numbers exist).
TEST_READS = ("all", "final", "none")


@dataclass
class Plan:
    """Everything built from the config before any data is read."""

    recipe: QuantRecipe | None
    eps: Schedule | None
    lr: Schedule
    float_lr: Schedule | None
    datamodule: ImageDataModule
    epochs: int
    float_epochs: int
    mixed: dict | None = None  # quant.mixed when a budget is set


MIXED_FIELDS = ("overrides", "keep_float")  # what a mixed-precision assignment sets in the recipe


def check_mixed(node) -> dict | None:
    """``quant.mixed``: None unless ``budget_bits`` is set; refuses bad values naming the key."""
    mixed = _plain(node) if node is not None else {}
    for key in mixed:
        if key not in ("budget_bits", "candidates", "batches"):
            raise ConfigError(f"quant.mixed.{key}", mixed[key], "one of budget_bits, candidates, batches")
    budget = mixed.get("budget_bits")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ConfigError("quant.mixed.budget_bits", budget, "a number of bits per weight > 0 (or null)")
    candidates = mixed.get("candidates", [1, 2, 3])
    if not isinstance(candidates, list) or not candidates or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 6 for c in candidates):
        raise ConfigError("quant.mixed.candidates", candidates, "a non-empty list of shift bits 0..6")
    batches = _positive_int("quant.mixed.batches", mixed.get("batches", 4))
    return {"budget_bits": float(budget), "candidates": candidates, "batches": batches}


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _positive_int(name: str, value, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, value, f"an integer >= {low}")
    return value


def build_datamodule(data_cfg: dict, seed: int) -> ImageDataModule:
    data_cfg = dict(data_cfg)
    name = data_cfg.pop("name", None)
    if name not in DATAMODULES:
        raise ConfigError("data.name", name, "one of " + ", ".join(DATAMODULES))
    cls = DATAMODULES[name]
    allowed = set()
    for klass in cls.__mro__:
        if klass.__dict__.get("__init__") is not None and klass is not object:
            allowed |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
    for key, value in data_cfg.items():
        if key not in allowed or key == "seed":
            raise ConfigError(f"data.{key}", value, f"a field of data={name}: " + ", ".join(sorted(allowed - {"seed"})))
    _positive_int("data.batch_size", data_cfg.get("batch_size", 1))
    _positive_int("data.num_workers", data_cfg.get("num_workers", 0), allow_zero=True)
    for key in ("train_subset", "val_subset", "test_subset"):
        if data_cfg.get(key) is not None:
            _positive_int(f"data.{key}", data_cfg[key])
    dm = cls(seed=seed, **data_cfg)
    dm.check()
    return dm


def check_trainer(trainer_cfg: dict) -> None:
    """Refuse a GPU trainer on a machine without a GPU, and a precision the CPU cannot run."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    has_gpu = torch.cuda.is_available()
    if accelerator in GPU_ACCELERATORS and not has_gpu:
        raise ConfigError("trainer.accelerator", accelerator,
                          "cpu or auto: this machine has no GPU (run with trainer=cpu, or "
                          "trainer.accelerator=cpu trainer.precision=32-true)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not has_gpu)
    precision = str(trainer_cfg.get("precision", "32-true"))
    if on_cpu and precision in ("16-mixed", "16", "16-true"):
        raise ConfigError("trainer.precision", precision, "32-true or bf16-mixed on a CPU")


def prepare(cfg: DictConfig) -> Plan:
    """Validate the whole config; raises :class:`ShiftQuantError` naming the bad key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "???", "a value: this key is required (set it on the command line)")
    quant = _plain(cfg.get("quant"))
    enabled = quant.pop("enabled", True)
    mixed = check_mixed(quant.pop("mixed", None)) if enabled else None
    recipe = QuantRecipe.from_dict(quant) if enabled else None
    # 0 epochs with a recipe: post-training quantization (calibrate, re-estimate BatchNorm, test);
    # without one: the float model as loaded, tested.
    epochs = _positive_int("trainer.max_epochs", cfg.trainer.get("max_epochs"), allow_zero=True)
    check_trainer(_plain(cfg.trainer))
    float_cfg = _plain(cfg.get("float_stage"))
    float_epochs = _positive_int("float_stage.epochs", float_cfg.get("epochs", 0), allow_zero=True)
    if recipe is None and float_epochs:
        raise ConfigError("float_stage.epochs", float_epochs, "0 when quant=none (train with trainer.max_epochs)")
    sched = _plain(cfg.schedule)
    steps = max(epochs, 1)  # a PTQ run trains no epoch; its schedules are never read
    lr = build_schedule(sched.get("lr", {}), "schedule.lr", steps, unit_interval=False, non_increasing=False)
    eps = None
    if recipe is not None:
        eps = build_schedule(sched.get("eps", {}), "schedule.eps", steps, unit_interval=True, non_increasing=True)
    float_lr = None
    if float_epochs:
        float_lr = build_schedule(float_cfg.get("lr", {}), "float_stage.lr", float_epochs,
                                  unit_interval=False, non_increasing=False)
    optim = _plain(cfg.optim)
    if optim.get("name") not in OPTIMIZERS:
        raise ConfigError("optim.name", optim.get("name"), "one of " + ", ".join(OPTIMIZERS))
    mult = optim.get("scale_lr_mult", 1.0)
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
        raise ConfigError("optim.scale_lr_mult", mult, "a positive number (the learned log2 scales' learning "
                          "rate over the weights')")
    if optim.get("scale_optimizer") not in SCALE_OPTIMIZERS:
        raise ConfigError("optim.scale_optimizer", optim.get("scale_optimizer"),
                          "null (the weights' optimizer steps the scales too) or adam (an Adam step for "
                          "the learned log2 scales alone)")
    if cfg.get("test", "all") not in TEST_READS:
        raise ConfigError("test", cfg.get("test"), "one of " + ", ".join(TEST_READS) + " (all: every model the run "
                          "makes; final: only the reported one; none: no test read, for tuning on validation)")
    model = _plain(cfg.model)
    source, bare = _resolve(model.get("name"))
    if recipe is not None:  # the layer patterns must select layers of this architecture
        in_chans = 3 if _plain(cfg.data).get("name") not in ("digits", "fashion_mnist") else 1
        select_layers(build_model(model["name"], 10, in_chans, options=model.get("options")), recipe)
    elif model.get("options"):  # the options must fit the architecture
        build_model(model["name"], 10, 3, options=model.get("options"))
    weights = model.get("weights")
    if weights and not Path(weights).is_file():
        raise ConfigError("model.weights", weights, "the path of an existing weights file")
    distill = _plain(cfg.get("distill"))
    if distill.get("enabled") and recipe is None:
        raise ConfigError("distill.enabled", True, "false when quant=none (distillation needs a float teacher)")
    alpha = distill.get("alpha", 0.5)
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError("distill.alpha", alpha, "a number in [0, 1]")
    if not isinstance(distill.get("temperature", 1.0), (int, float)) or distill.get("temperature", 1.0) <= 0:
        raise ConfigError("distill.temperature", distill.get("temperature"), "a number > 0")
    teacher_weights = distill.get("teacher_weights")
    if teacher_weights is not None and not Path(str(teacher_weights)).is_file():
        raise ConfigError("distill.teacher_weights", teacher_weights,
                          "null (the model before conversion) or the path of an existing weights file")
    _positive_int("calibrate_batches", cfg.get("calibrate_batches", 4), allow_zero=True)
    bn_reestimate_batches(cfg)
    check_threads(cfg.get("threads", "auto"))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        try:
            meta = checkpoint_meta(ckpt_path)
        except CheckpointError as exc:
            raise ConfigError("ckpt_path", ckpt_path, f"a shiftquant checkpoint of this run ({exc})") from None
        # A mixed-precision run's checkpoint holds the widths it chose: those are not a mismatch.
        problems = describe_mismatch(meta, model["name"], recipe, ignore=MIXED_FIELDS if mixed else ())
        if problems:
            raise ConfigError("ckpt_path", ckpt_path, "a checkpoint of the configured model; it has " + "; ".join(problems))
    dm = build_datamodule(_plain(cfg.data), int(cfg.seed))
    if model.get("pretrained") and not weights and source != "local":  # last: it may ask the network
        check_pretrained_available(source, bare)
    return Plan(recipe, eps, lr, float_lr, dm, epochs, float_epochs, mixed)


def bn_reestimate_batches(cfg: DictConfig, quantized: bool = True) -> int:
    """``bn_reestimate.batches`` (0 when the group is null or the value is null/0) for a run with a
    recipe (``quantized``); for a ``quant=none`` run only with ``bn_reestimate.float_runs=true``."""
    node = cfg.get("bn_reestimate")
    if node is None:
        return 0
    node = _plain(node)
    for key in node:
        if key not in ("batches", "float_runs"):
            raise ConfigError(f"bn_reestimate.{key}", node[key], "the fields batches, float_runs (or bn_reestimate=null)")
    if not isinstance(node.get("float_runs", False), bool):
        raise ConfigError("bn_reestimate.float_runs", node["float_runs"], "true or false")
    value = node.get("batches")
    value = 0 if value is None else _positive_int("bn_reestimate.batches", value, allow_zero=True)
    return value if quantized or node.get("float_runs", False) else 0


def reestimation_batches(dm: ImageDataModule, n_batches: int, seed: int) -> list[torch.Tensor]:
    """``n_batches`` training batches drawn at random (a generator of their own: the run's RNG is
    left alone), for :func:`shiftquant.reestimate_batchnorm`."""
    g = torch.Generator().manual_seed(seed + 7919)
    order = torch.randperm(len(dm.train_set), generator=g)[: n_batches * dm.batch_size].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dm.train_set, order), batch_size=dm.batch_size)
    return [x for x, _ in loader]


def choose_widths(model, recipe: QuantRecipe, mixed: dict, dm: ImageDataModule, out: Path) -> tuple[QuantRecipe, dict]:
    """Sensitivity of each layer at each candidate width, then the widths under the budget."""
    from ..mixed import assign_bits, sensitivity

    sens = sensitivity(model, recipe, dm.calibration_batches(mixed["batches"]), mixed["candidates"],
                       cache=out / "sensitivity.json", progress=False)
    sens.plot(out / "sensitivity.png")
    chosen = assign_bits(sens, bits_per_weight=mixed["budget_bits"], recipe=recipe)
    log.info("mixed precision: %.3f bits per weight (budget %.3f):\n%s", chosen.bits_per_weight,
             mixed["budget_bits"], chosen.table())
    return chosen.recipe(recipe), {**mixed, "widths": chosen.widths, "code_bits": chosen.code_bits,
                                   "bits_per_weight": chosen.bits_per_weight,
                                   "weight_bytes": chosen.weight_bytes, "sensitivity": chosen.sensitivity,
                                   "table": sens.to_dict()}


def _hard_val_acc(trainer: L.Trainer, module, dm) -> float:
    return float(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/hard_acc"])


def _instantiate_all(node) -> list:
    from hydra.utils import instantiate
    return [instantiate(v) for v in (node or {}).values() if v is not None]


def last_checkpoint_path(out_dir: Path) -> Path:
    """Where a run keeps its final (and, while it runs, its latest) model."""
    return out_dir / "checkpoints" / "last.ckpt"


def make_trainer(cfg: DictConfig, out_dir: Path, max_epochs: int, history: MetricHistory, main: bool) -> L.Trainer:
    trainer_cfg = _plain(cfg.trainer)
    trainer_cfg["max_epochs"] = max_epochs
    callbacks = [history, RankAgreement(str(out_dir)), ReleaseProcessGroup()]
    if main:
        callbacks += [LastCheckpoint(str(last_checkpoint_path(out_dir)))] + _instantiate_all(cfg.get("callbacks"))
    if not trainer_cfg.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if main:
        loggers = _instantiate_all(cfg.get("logger"))
    else:
        from lightning.pytorch.loggers import CSVLogger
        loggers = [CSVLogger(str(out_dir), name="csv")]
        trainer_cfg["enable_checkpointing"] = False
    return L.Trainer(**trainer_cfg, logger=loggers or False, callbacks=callbacks,
                     plugins=[AtomicCheckpointIO()], default_root_dir=str(out_dir))


def _test_acc(trainer: L.Trainer, module, dm) -> float:
    return float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])


def _model_weights(checkpoint: dict) -> dict:
    """The model's tensors of a loaded Lightning checkpoint (without the ``model.`` prefix)."""
    return {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def _saved_weights(path: Path) -> dict:
    return _model_weights(torch.load(path, map_location="cpu", weights_only=True))


def _check_saved(path: Path, model) -> None:
    """The checkpoint on disk holds exactly the model the run tested."""
    if not path.is_file():
        raise CheckpointError(f"the run's final checkpoint {path} was not written")
    if state_checksum(_saved_weights(path)) != state_checksum(model.state_dict()):
        raise CheckpointError(f"{path} does not hold the final model the run tested")


def _best_checkpoint(trainer: L.Trainer, module, dm, final: Path, quantized: bool, test: bool = True) -> dict | None:
    """The best epoch by the monitored validation metric, with its own test accuracy (``test``)."""
    cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path), None)
    if cb is None:
        return None
    path = Path(cb.best_model_path).resolve()
    if not path.is_file():
        # A run killed after its last checkpoint named a new best and before that file was whole (a
        # resumed run inherits the name): the final checkpoint, the reported model, is unaffected.
        log.warning("the best checkpoint %s is gone; results.json marks it missing", path)
        return {"path": str(path), "monitor": cb.monitor, "missing": True}
    saved = torch.load(path, map_location="cpu", weights_only=True)  # read once: its epoch and weights
    best = {"path": str(path), "monitor": cb.monitor, "mode": cb.mode,
            "score": float(cb.best_model_score) if cb.best_model_score is not None else None,
            "epoch": int(saved["epoch"]) + 1}
    if path == final:
        best["same_as_checkpoint"] = True
        return best
    if not test:
        return best
    other = copy.deepcopy(module)
    other.model.load_state_dict(_model_weights(saved))
    if quantized:
        set_slope(other.model, 0.0)
    best["hard_test_acc" if quantized else "fp_test_acc"] = _test_acc(trainer, other, dm)
    return best


def train(cfg: DictConfig) -> dict:
    """Run the configured job; returns the results also written to ``results.json``."""
    plan = prepare(cfg)
    started = time.time()
    threads, why = choose_threads(cfg.get("threads", "auto"))
    torch.set_num_threads(threads)
    log.info("computing on %d thread(s): %s", threads, why)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True)
    dm = plan.datamodule
    dm.setup("fit")
    model_cfg = _plain(cfg.model)
    model = build_model(model_cfg["name"], dm.num_classes, dm.channels, bool(model_cfg.get("pretrained")),
                        model_cfg.get("weights"), model_cfg.get("options"))
    distill = _plain(cfg.get("distill"))
    meta = {"model": model_cfg, "num_classes": dm.num_classes, "in_chans": dm.channels,
            "input_shape": list(dm.val_set[0][0].shape),
            "recipe": plan.recipe.to_dict() if plan.recipe else None, "data": dm.name}
    reads = cfg.get("test", "all")
    results: dict = {"recipe": meta["recipe"], "model": model_cfg["name"], "data": dm.name, "test_reads": reads,
                     "seed": int(cfg.seed), "epochs": plan.epochs, "split_sizes": dm.split_sizes,
                     # what rebuilds these splits image for image (`shiftquant run --split-from RUN_DIR`)
                     "data_config": _plain(cfg.data)}
    resuming = cfg.get("ckpt_path") is not None
    float_history = MetricHistory()

    if plan.float_epochs and not resuming:
        float_module = ClassifierModule(model, plan.float_lr, None, _plain(cfg.optim), meta={**meta, "recipe": None})
        float_trainer = make_trainer(cfg, out / "float_stage", plan.float_epochs, float_history, main=False)
        float_trainer.fit(float_module, datamodule=dm)
        results["float_stage_epochs"] = plan.float_epochs
        # The float model as trained, before conversion: what `shiftquant sensitivity` reads.
        float_ckpt = out / "float_stage" / "checkpoints" / "float.ckpt"
        float_trainer.save_checkpoint(str(float_ckpt), weights_only=False)
        results["float_checkpoint"] = str(float_ckpt.resolve())

    history = MetricHistory()
    teacher = None
    if plan.recipe is not None:
        eval_trainer = make_trainer(cfg, out / "float_eval", 1, MetricHistory(), main=False)
        if not resuming and reads == "all":
            results["fp_test_acc"] = _test_acc(eval_trainer, ClassifierModule(model, plan.lr, meta=meta), dm)
        if distill.get("enabled"):
            teacher = frozen_copy(model) if distill.get("teacher_weights") is None else frozen_copy(
                build_model(model_cfg["name"], dm.num_classes, dm.channels, weights=distill["teacher_weights"],
                            options=model_cfg.get("options")))
        recipe = plan.recipe
        if plan.mixed and resuming:  # the widths the interrupted run chose
            recipe = QuantRecipe.from_dict(checkpoint_meta(cfg.ckpt_path)["recipe"])
        elif plan.mixed:
            recipe, results["mixed"] = choose_widths(model, recipe, plan.mixed, dm, out)
        meta["recipe"] = results["recipe"] = recipe.to_dict()
        quantize_model(model, recipe)
        calibrate(model, dm.calibration_batches(int(cfg.get("calibrate_batches", 4))))
    start_exponents = scale_exponents(model) if plan.recipe is not None and not resuming else None
    module = ClassifierModule(model, plan.lr, plan.eps, _plain(cfg.optim), teacher,
                              distill.get("temperature", 4.0), distill.get("alpha", 0.5) if teacher else 0.0, meta)
    trainer = make_trainer(cfg, out, plan.epochs, history, main=True)
    if plan.recipe is not None and not resuming and plan.epochs:
        set_slope(model, plan.eps(0.0, plan.epochs))
        start = trainer.validate(module, datamodule=dm, verbose=False)[0]
        results["start_val_acc"] = float(start["val/acc"])
        results["start_eps"] = plan.eps(0.0, plan.epochs)
    if plan.epochs:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))

    if plan.recipe is not None and plan.epochs:
        steps = trainer.num_training_batches
        if not math.isfinite(steps):  # not set in the launching process of ddp_spawn
            steps = math.ceil(len(dm.train_set) / (dm.batch_size * trainer.world_size))
        steps = max(int(steps), 1)
        eps_final = plan.eps(plan.epochs - 1 / steps, plan.epochs)
        set_slope(model, eps_final)
        results["eps_final"] = eps_final
        if reads == "all":
            results["relaxed_test_acc"] = _test_acc(trainer, module, dm)
    if plan.recipe is not None:
        if not plan.epochs:  # PTQ: nothing trained, the calibrated hard model is the result
            results["ptq"] = True
            results["eps_final"] = 0.0
        set_slope(model, 0.0)
        bn_batches = bn_reestimate_batches(cfg)
        if bn_batches:
            before = _hard_val_acc(trainer, module, dm)
            used = reestimate_batchnorm(model, reestimation_batches(dm, bn_batches, int(cfg.seed)))
            results["hard_val_acc"] = _hard_val_acc(trainer, module, dm)
            results["bn_reestimate"] = {"batches": used, "eps": 0.0, "hard_val_acc_before": before,
                                        "hard_val_acc_after": results["hard_val_acc"]}
        else:
            results["hard_val_acc"] = _hard_val_acc(trainer, module, dm)
            results["bn_reestimate"] = None
        if reads != "none":
            results["hard_test_acc"] = _test_acc(trainer, module, dm)
        # Did the learned power-of-two scales learn? (Unknown for a resumed run: its start is gone.)
        results["exponents_moved"] = exponents_moved(start_exponents, scale_exponents(model)) \
            if start_exponents is not None else None
        if bn_batches or not plan.epochs:  # the reported model: new statistics, or no training at all
            trainer.save_checkpoint(str(last_checkpoint_path(out)), weights_only=False)
        if not plan.epochs and "hard_test_acc" in results:
            results["relaxed_test_acc"] = results["hard_test_acc"]
    else:
        bn_batches = bn_reestimate_batches(cfg, quantized=False) if plan.epochs else 0
        if bn_batches:  # a peer's own quantized layers, which the pipeline sees as a float model
            before = _hard_val_acc(trainer, module, dm)
            used = reestimate_batchnorm(model, reestimation_batches(dm, bn_batches, int(cfg.seed)))
            results["bn_reestimate"] = {"batches": used, "val_acc_before": before}
            trainer.save_checkpoint(str(last_checkpoint_path(out)), weights_only=False)
        results["val_acc"] = _hard_val_acc(trainer, module, dm)
        if reads != "none":
            results["fp_test_acc"] = _test_acc(trainer, module, dm)
        if not plan.epochs:  # nothing trained: the loaded model is the result
            results["evaluated_only"] = True
            trainer.save_checkpoint(str(last_checkpoint_path(out)), weights_only=False)
    final = last_checkpoint_path(out).resolve()
    _check_saved(final, model)
    results["checkpoint"] = str(final)
    results["best_checkpoint"] = _best_checkpoint(trainer, module, dm, final, plan.recipe is not None,
                                                  test=reads == "all")
    results["history"] = history.epochs
    results["float_stage_history"] = float_history.epochs
    results["wall_time_s"] = round(time.time() - started, 1)
    if trainer.is_global_zero:
        with open(out / "results.json", "w") as f:
            json.dump(results, f, indent=2)
    return results


def report(results: dict) -> str:
    """The final table printed at the end of a run."""
    rows = [("float (fp_test_acc)", results.get("fp_test_acc"), "-")]
    if results.get("ptq"):
        rows += [("hard (eps = 0, PTQ: no training)", results.get("hard_test_acc"), 0.0)]
    elif results.get("recipe"):
        rows += [(f"relaxed (eps = {results['eps_final']:g})", results.get("relaxed_test_acc"), results["eps_final"]),
                 ("hard (eps = 0, deployed)", results.get("hard_test_acc"), 0.0)]
    if results.get("test_reads") not in (None, "all"):
        val = results.get("hard_val_acc", results.get("val_acc"))
        rows.append((f"validation, deployed (test={results['test_reads']})", val, "-"))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'model':<{width}} {'test acc':>9}", "-" * (width + 10)]
    for name, acc, _ in rows:
        lines.append(f"{name:<{width}} {'-' if acc is None else f'{100 * acc:8.2f}%':>9}")
    if results.get("mixed"):
        m = results["mixed"]
        lines.append(f"mixed precision: {m['bits_per_weight']:.3f} bits per weight (budget {m['budget_bits']:g}); "
                     "shift bits " + ", ".join(f"{k}={v}" for k, v in m["widths"].items())
                     + ("; bits per weight " + ", ".join(f"{k}={v}" for k, v in m["code_bits"].items())
                        if m.get("code_bits") else ""))
    if results.get("checkpoint"):
        lines.append(f"checkpoint: {results['checkpoint']} (the model above)")
    best = results.get("best_checkpoint")
    if best and best.get("missing"):
        lines.append(f"best checkpoint {best['path']}: gone (the run was killed before it was written)")
    elif best and not best.get("same_as_checkpoint"):
        acc = best.get("hard_test_acc", best.get("fp_test_acc"))
        tested = "not tested" if acc is None else \
            f"test acc {100 * acc:.2f}%{', hard' if 'hard_test_acc' in best else ''}"
        lines.append(f"best epoch {best['epoch']} by {best['monitor']} = {best['score']:.4f}: {best['path']} ({tested})")
    sizes = results.get("split_sizes")
    if sizes:
        lines.append(f"images: {describe_splits(sizes)}")
    return "\n".join(lines)


__all__ = ["Plan", "ShiftQuantError", "prepare", "report", "train"]
