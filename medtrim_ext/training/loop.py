"""The training loop: one process or many (torchrun), MedTrim or InfoNCE, resumable after a crash.

    from medtrim_ext.training import load_config, train
    result = train(load_config("demo", ["train.steps=200"]))

Each step: load the batch, encode images and reports, mine triplets (or gather the batch for
InfoNCE), compute the loss, back-propagate, clip, step AdamW and the LR schedule. The step time is
split into those phases (:class:`~medtrim_ext.training.timing.StepTimer`). The encoders are in
train mode, or in eval mode with ``model.dropout=false`` (as the published code). With
``objective.kind=medtrim_offline`` and ``objective.offline_triplets=N``, N triplets are mined once
before the first step into ``<out_dir>/offline_triplets.csv``, which a resumed run reuses
(:mod:`~medtrim_ext.training.batches` picks the batches the objective needs).
``<out_dir>/last.pt`` is written atomically every ``train.ckpt_every`` steps and at the end; with
``train.resume=auto`` a restarted run continues from it (only with the same config, see
:mod:`~medtrim_ext.training.rundir`) and produces the same weights as an uninterrupted run, with
dropout and with data-loader workers (on one device; tested on the CPU). Without ``train.out_dir``
every run writes into a new ``runs/<objective.kind>-<time>`` folder.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from ..utils.io import atomic_write
from .batches import OFFLINE_TRIPLETS_FILE, build_batch_sampler
from .builders import build_dataset, build_model, build_tokenizer, check_model, model_config, resolve_device
from .checkpoint import CHECKPOINT_NAME, rng_state, save_checkpoint, set_rng_state
from .config import Config, replace
from .distributed import DistContext, all_reduce_sum, barrier, broadcast_object, init_distributed, shutdown
from .logger import RunLogger
from .objective_step import build_objective
from .optim import build_optimizer, build_scheduler
from .rundir import CONFIG_NAME, claim_new_dir, lock_run_dir, plan_resume, with_default_out_dir
from .sampling import EpochKeyed
from .timing import StepTimer


def autocast_context(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _to_device(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    for key in ("images", "input_ids", "attention_mask", "index"):
        out[key] = batch[key].to(device, non_blocking=True)
    out["entities"] = batch["entities"].to(device)
    return out


def _create_out_dir(make, path: Path):
    """``make(path)``; an OSError as a ValueError naming train.out_dir: a folder check cannot see
    that ``/proc/x`` cannot be made (root may write /proc, yet mkdir there fails)."""
    try:
        return make(path)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise ValueError(f"train.out_dir {str(path)!r} cannot be created: "
                         f"{exc.strerror or exc}{where}") from None


class Trainer:
    """Builds every part of a run from a :class:`Config` and trains it (see :func:`train`)."""

    def __init__(self, cfg: Config, ctx: DistContext | None = None):
        self._run_lock = None   # the main process's hold on out_dir, until fit ends
        try:
            self._build(cfg, ctx)
        except BaseException:
            self.release()   # a run that fails to start lets its folder go
            raise

    def release(self) -> None:
        """Let the run folder go (:func:`~medtrim_ext.training.rundir.lock_run_dir`); ``fit`` does
        at its end."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    def _build(self, cfg: Config, ctx: DistContext | None) -> None:
        kind = "cuda" if cfg.train.device.startswith("cuda") or (
            cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.ctx = ctx if ctx is not None else init_distributed(kind)
        self.device = resolve_device(cfg.train.device, self.ctx)
        self.main = self.ctx.is_main
        self.progress = cfg.train.progress and self.main

        # every check before anything is written: a run that cannot start leaves no trace
        fresh_dir = cfg.train.out_dir is None  # a new runs/<kind>-<time>, claimed below
        if fresh_dir:
            cfg = with_default_out_dir(cfg)
        self.cfg, self.out_dir = cfg, Path(cfg.train.out_dir)
        resume, self.state = plan_resume(cfg, self.out_dir, fresh_dir=fresh_dir, warn=self.main)
        if self.state is not None and self.state.get("world_size", 1) != self.ctx.world_size and self.main:
            warnings.warn(f"resuming a run of {self.state.get('world_size')} processes on "
                          f"{self.ctx.world_size}: the data order changes from here on")
        self.start_step = self.state["step"] if self.state is not None else 0
        if cfg.train.steps <= cfg.optim.warmup_steps and self.main:
            warnings.warn(f"train.steps={cfg.train.steps} <= optim.warmup_steps="
                          f"{cfg.optim.warmup_steps}: the whole run is warm-up (the learning rate "
                          f"rises towards optim.lr={cfg.optim.lr:g} and never decays)")
        check_model(cfg)  # e.g. an open_clip name that does not resolve: before any file is written
        torch.manual_seed(cfg.train.seed)  # same initial weights on every process
        self.dataset = build_dataset(cfg, cfg.data.train_split, train=True, progress=self.progress)
        if cfg.train.batch_size > len(self.dataset):  # no full batch: it failed after writing the folder
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is more than the "
                             f"{len(self.dataset)} samples of the {cfg.data.train_split!r} split")

        if fresh_dir:  # the main process takes the folder (another run may have taken the name)
            name = str(_create_out_dir(claim_new_dir, self.out_dir)) if self.main else None
            name = broadcast_object(name, self.ctx)
            if name != str(self.out_dir):
                cfg = replace(cfg, train={"out_dir": name})
                self.cfg, self.out_dir = cfg, Path(name)
        if self.main:
            _create_out_dir(lambda p: p.mkdir(parents=True, exist_ok=True), self.out_dir)
            # one run per folder: a second run refuses before it writes anything
            self._run_lock = lock_run_dir(self.out_dir)
            if self.state is None:  # a continued run's config.json changes once its state has loaded
                self._write_config()
            if self.progress:
                what = f"continuing from step {self.start_step}" if self.state is not None else "new run"
                print(f"run folder {self.out_dir} ({what})", file=sys.stderr)
        self.tokenizer = build_tokenizer(cfg, self.dataset.texts, self.out_dir, self.ctx)
        model = build_model(cfg, len(self.tokenizer)).to(self.device)
        # the model's embedding width (an open_clip model's comes from its own config)
        self.objective = build_objective(cfg.objective, model.embed_dim, cfg.train.seed).to(self.device)
        self.optimizer = build_optimizer(model, self.objective, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.steps, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.amp == "fp16" else None
        # what each step differentiates and steps (fixed for the run)
        self.objective_params = [p for p in self.objective.parameters() if p.requires_grad]
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.state is not None:
            try:
                model.load_state_dict(self.state["model"])
                self.objective.load_checkpoint_state(self.state)
                self.optimizer.load_state_dict(self.state["optimizer"])
                self.scheduler.load_state_dict(self.state["scheduler"])
                if self.scaler is not None and self.state.get("scaler"):
                    self.scaler.load_state_dict(self.state["scaler"])
                set_rng_state(self.state["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # train.resume=force or a path
                msg = str(exc) if len(str(exc)) <= 1500 else str(exc)[:1500] + " ..."
                raise ValueError(f"checkpoint {resume} does not fit this run's model, objective or "
                                 f"optimizer (did model.* or objective.* change?): {msg}") from None
            if self.main:
                self._write_config()
        self.model = model
        if self.ctx.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loader = self._loader()
        self.timer = StepTimer(self.device, sync=cfg.train.sync_timing)

    def _write_config(self) -> None:
        with atomic_write(self.out_dir / CONFIG_NAME) as f:
            json.dump(self.cfg.to_dict(), f, indent=1)

    # -- data ------------------------------------------------------------------------------------
    def _loader(self):
        from ..datasets import Collator

        cfg = self.cfg
        batches = build_batch_sampler(cfg, self.dataset, self.objective, self.ctx, start_step=self.start_step,
                                      out_dir=self.out_dir, progress=self.progress)
        # its own generator: iter(loader) draws the workers' base seed from it, not from torch's
        # global one, whose state (dropout masks) a resumed run has just restored from the checkpoint
        return torch.utils.data.DataLoader(
            EpochKeyed(self.dataset), batch_sampler=batches, num_workers=cfg.data.num_workers,
            collate_fn=Collator(self.tokenizer, max_length=cfg.data.max_length),
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.ctx.rank))

    # -- one step ----------------------------------------------------------------------------------
    def _step(self, batch: dict, step: int) -> dict:
        cfg, timer = self.cfg, self.timer
        with timer.phase("data"):
            batch = _to_device(batch, self.device)
        with autocast_context(self.device, cfg.train.amp):
            with timer.phase("encoders_forward"):
                img, txt = self.model(batch["images"], batch["input_ids"], batch["attention_mask"])
            out = self.objective(img, txt, batch, self.ctx, timer, step=step)

        obj_params = self.objective_params
        loss = self.scaler.scale(out.loss) if self.scaler is not None else out.loss
        with timer.phase("loss_backward"):
            grads = torch.autograd.grad(loss, [img, txt, *obj_params], allow_unused=True)
        with timer.phase("encoders_backward"):
            torch.autograd.backward([img, txt], [g if g is not None else torch.zeros_like(x)
                                                 for g, x in zip(grads[:2], (img, txt))])
            for p, g in zip(obj_params, grads[2:]):
                g = torch.zeros_like(p) if g is None else g
                if self.ctx.enabled:  # not under DDP: average like DDP does
                    g = all_reduce_sum(g, self.ctx) / self.ctx.world_size
                p.grad = g
        with timer.phase("optimizer"):
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if cfg.optim.clip_grad > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip_grad)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack(
                    [p.grad.norm() for p in self.params if p.grad is not None]))
            finite = bool(torch.isfinite(grad_norm))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif finite:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        if not finite and self.scaler is None:
            raise FloatingPointError(f"step {step}: the loss or a gradient is not finite "
                                     f"(loss {float(out.loss):.4g}); lower optim.lr or use amp=bf16")
        logs = {"loss": out.loss.detach(), "grad_norm": grad_norm.detach(), **out.logs}
        return logs

    # -- the run -----------------------------------------------------------------------------------
    def checkpoint_state(self, step: int) -> dict:
        model = unwrap(self.model)
        # an open_clip model's resolved config: the run rebuilds without the file its model.name named
        built = model.to_config() if self.cfg.model.kind == "open_clip" else model_config(self.cfg, len(self.tokenizer))
        return {"step": step, "config": self.cfg.to_dict(), "model_config": built,
                "model": model.state_dict(), **self.objective.checkpoint_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(), "world_size": self.ctx.world_size, "tokenizer": "tokenizer"
                if not self.cfg.model.tokenizer else self.cfg.model.tokenizer}

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        cfg = self.cfg
        summary_path = self.out_dir / "train_summary.json"
        if self.start_step >= cfg.train.steps and summary_path.exists():
            # a finished run started again (e.g. a re-run demo): nothing to train
            return {**json.loads(summary_path.read_text()), "paths": self.written_paths()}
        logger = RunLogger(self.out_dir, enabled=self.main, tensorboard=cfg.train.tensorboard,
                           resume_step=self.start_step)
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=self.start_step, desc=f"train {cfg.objective.kind}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        self.model.train(cfg.model.dropout)  # dropout off: eval mode throughout, as published
        step = self.start_step
        last_logs: dict = {}
        t0 = time.perf_counter()
        it = iter(self.loader)
        try:
            while step < cfg.train.steps:
                with self.timer.phase("data"):
                    batch = next(it)
                logs = self._step(batch, step)
                times = self.timer.end_step()
                step += 1
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    last_logs = self._log(logger, step, logs, times)
                    bar.set_postfix(loss=f"{last_logs['loss']:.4f}", lr=f"{last_logs['lr']:.2e}")
                if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
                    if self.main:
                        save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.checkpoint_state(step))
                bar.update(1)
        finally:
            bar.close()
            logger.close()
        result = {"out_dir": str(self.out_dir), "checkpoint": str(self.out_dir / CHECKPOINT_NAME),
                  "steps": step, "resumed_from": self.start_step, "world_size": self.ctx.world_size,
                  "device": str(self.device), "amp": cfg.train.amp, "objective": cfg.objective.kind,
                  "wall_s": time.perf_counter() - t0, "step_time": self.timer.mean(),
                  "final": last_logs, "plots": self._plot_curves() if self.main else {}}
        if self.main:
            if cfg.model.kind == "open_clip":   # the folder open_clip loads: create_model("local-dir:...")
                from ..integrations.open_clip import export_open_clip

                export_open_clip(unwrap(self.model), self.out_dir / "open_clip")
            with atomic_write(summary_path) as f:
                json.dump(result, f, indent=1)
        return {**result, "paths": self.written_paths()}

    def written_paths(self) -> dict[str, str]:
        """What the run folder holds: name -> path, for the files and folders that exist."""
        names = {"checkpoint": CHECKPOINT_NAME, "config": CONFIG_NAME, "metrics": "metrics.csv",
                 "summary": "train_summary.json", "tensorboard": "tb", "tokenizer": "tokenizer",
                 "offline_triplets": OFFLINE_TRIPLETS_FILE, "entity_cache": "entity-cache",
                 "open_clip": "open_clip"}
        return {k: str(self.out_dir / v) for k, v in names.items() if (self.out_dir / v).exists()}

    def _plot_curves(self) -> dict[str, str]:
        """``<out_dir>/training_loss.png`` from ``metrics.csv``: the loss over the steps (a run
        whose log has no finite loss gets a warning, not a failed run)."""
        from ..evaluation.plots import plot_training_curves

        try:
            path = plot_training_curves({self.cfg.objective.kind: [self.out_dir / "metrics.csv"]},
                                        self.out_dir / "training_loss.png", metric="loss")
        except ValueError as exc:
            warnings.warn(f"no training curve plotted: {exc}")
            return {}
        return {"training_loss": str(path)}

    def _log(self, logger: RunLogger, step: int, logs: dict, times: dict) -> dict:
        names = list(logs)
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(())
                              for v in logs.values()])
        values = all_reduce_sum(values, self.ctx) / self.ctx.world_size
        row = dict(zip(names, values.tolist()))
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row.update({f"time_{k}": v for k, v in times.items()})
        logger.log(step, row)
        return row


def train(cfg: Config) -> dict:
    """Train one run as configured; returns a summary (also in ``<out_dir>/train_summary.json``)
    with ``out_dir`` (a new ``runs/<objective.kind>-<time>`` without ``train.out_dir``),
    ``checkpoint`` and ``paths`` (what the run folder holds).

    Under torchrun every process calls this; the process group is set up from the environment.
    """
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
    except BaseException:
        shutdown(trainer.ctx, finished=False)
        raise
    shutdown(trainer.ctx)
    return result
