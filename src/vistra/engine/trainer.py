"""Trainer: the one training loop every task uses (AMP, grad clipping, EMA, resumable checkpoints, logs).

Files written to `cfg.out_dir`, each atomically: config.yaml (resolved config, at start), metrics.jsonl (one line
per epoch), curves.png, last.pt (after every epoch) and best.pt (when `cfg.best_metric` improves).

A diverging run stops with TrainingDiverged before anything non-finite reaches a checkpoint: at a step whose loss
(on any process) or clipped gradient norm is NaN or infinite, before the optimizer step, and at the end of an epoch
whose weights (or EMA weights) hold a NaN or infinity; last.pt then still holds the last good epoch.

Under torchrun the loop runs data-parallel (DDP: gloo on CPU, NCCL on GPU): each process trains on its shard
of every epoch with `cfg.batch_size` images (the global batch is world_size times that), losses and logs are
averaged over processes, evaluation runs on rank 0 and its metrics are shared, and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from vistra.checkpoints.errors import CheckpointError
from vistra.engine import distributed
from vistra.engine.checkpoint_io import atomic_save, load_checkpoint, remove_stale_temp_files
from vistra.engine.config import TrainConfig
from vistra.engine.ema import ModelEma
from vistra.engine.errors import TrainingDiverged
from vistra.engine.metrics_log import MetricsLog
from vistra.engine.optim import StepwiseLR, build_lr_fn, build_optimizer, build_param_groups
from vistra.engine.seed import epoch_generator, get_rng_state, seed_everything, seed_worker, set_rng_state

StepFn = Callable[[nn.Module, Any], "tuple[Tensor, dict[str, float]] | Tensor"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]

CHECKPOINT_FORMAT = "vistra.engine/1"
# Config fields that may change between a run and its resumption without changing the result.
_BOOKKEEPING_KEYS = ("epoch", "lr", "epoch_time_s")
_RESUME_FREE_FIELDS = ("progress", "out_dir", "device", "eval_every", "eval_raw", "best_metric", "best_mode",
                       "compile", "compile_backend")


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested mappings (returned as dicts), lists and tuples to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _as_float_dict(values: Mapping[str, Any], source: str) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise TypeError(f"{source} must return a dict of str -> float, got {type(values).__name__}")
    out = {}
    for key, value in values.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{source} returned {key!r}={value!r}, which is not a number") from err
    return out


class Trainer:
    """Trains `model` on `train_dataset` by calling `step_fn(model, batch) -> (loss, logs)` for each batch.

    `eval_fn(model) -> {name: value}` runs under `torch.no_grad()` with the model in eval mode (the EMA
    model when `cfg.ema_decay` is set). `param_groups` defaults to `build_param_groups(model,
    cfg.weight_decay)`. `sampler` replaces the default seeded shuffling (a DistributedSampler over the
    processes, seeded with cfg.seed, one process when not distributed); its `set_epoch(epoch)` is called every
    epoch. Epochs are numbered from 1; `epoch` is the number of completed epochs. `step_fn` gets the
    DDP-wrapped model under torchrun: it should only call it.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_dataset: Dataset,
        step_fn: StepFn,
        eval_fn: EvalFn | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = distributed.setup(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.model = model.to(self.device)
        self.train_model: nn.Module = self.model  # what step_fn calls: the DDP wrapper under torchrun
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # only the training steps run compiled; eval, EMA and checkpoints use self.model
            from vistra.export.compile import compile_model

            self.train_model = compile_model(self.train_model, backend=cfg.compile_backend)
        self.train_dataset = train_dataset
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.collate_fn = collate_fn
        self.sampler = sampler if sampler is not None else DistributedSampler(
            train_dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed)
        self.out_dir = Path(cfg.out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"

        groups = param_groups if param_groups is not None else build_param_groups(model, cfg.weight_decay)
        self.optimizer = build_optimizer(groups, cfg)
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self._amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.steps_per_epoch = self._count_steps()
        self.scheduler = StepwiseLR(self.optimizer, build_lr_fn(cfg, self.steps_per_epoch))

        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self._log = MetricsLog(self.out_dir)
        self._show = cfg.progress and self.dist.is_main

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA copy of the model, or None when EMA is off."""
        return self.ema.module if self.ema is not None else None

    # ----------------------------------------------------------------------------------------- data
    def build_loader(self, epoch: int) -> DataLoader:
        """The training DataLoader of `epoch`: its order and worker seeds depend only on (cfg.seed, epoch)."""
        cfg = self.cfg
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        return DataLoader(
            self.train_dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=cfg.drop_last,
            generator=epoch_generator(cfg.seed, epoch),
            worker_init_fn=seed_worker if cfg.num_workers > 0 else None,
        )

    def _count_steps(self) -> int:
        try:
            steps = len(self.build_loader(1))
        except TypeError as err:
            raise TypeError("train_dataset must be a map-style dataset with __len__") from err
        if steps == 0:
            raise ValueError(
                f"an epoch has no batches: {len(self.train_dataset)} samples, batch_size="  # type: ignore[arg-type]
                f"{self.cfg.batch_size}, drop_last={self.cfg.drop_last}; lower batch_size or set drop_last=False"
            )
        return steps

    # ------------------------------------------------------------------------------------- training
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train up to `cfg.epochs`; with `resume` continue from out_dir/last.pt when it exists.

        Returns the history: one dict per epoch with `epoch`, `train_loss`, `lr`, `train_<log>` means,
        `epoch_time_s` and the eval metrics of evaluated epochs.
        """
        main = self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for path in (self.last_path, self.best_path):
                remove_stale_temp_files(path)
        distributed.barrier()
        if resume and self.last_path.is_file():
            # Loaded on the CPU: RNG states must stay there; weights are copied to the model's device.
            self._resume_from(self.last_path)
        else:
            if main and self.last_path.is_file() and self.epoch == 0:
                warnings.warn(f"starting a fresh run over {self.last_path}; use fit(resume=True) to continue it",
                              stacklevel=2)
            seed_everything(self.cfg.seed + self.dist.rank)
        if main:
            self.cfg.write_yaml(self.out_dir / "config.yaml")
            self._log.rewrite(self.history)

        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            record = self._train_one_epoch(epoch)
            self._check_finite_weights(epoch)
            if self.eval_fn is not None and (epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs):
                record.update(self._evaluate())
            self.history.append(record)
            self.epoch = epoch
            self._save_best_if_improved(record)
            state = self.state_dict()  # every process takes part (it gathers their RNG states)
            if main:
                atomic_save(state, self.last_path)
                self._log.append(record)
                self._log.plot(self.history)
            distributed.barrier()  # no process runs ahead of the checkpoint it would resume from
            if self._show:
                tqdm.write(f"epoch {epoch}/{self.cfg.epochs}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"
                ))
        return self.history

    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        sums: dict[str, float] = {}
        loss_sum, steps, start = 0.0, 0, time.perf_counter()
        bar = tqdm(
            self.build_loader(epoch),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            disable=not self._show,
            dynamic_ncols=True,
        )
        with bar:
            for step, batch in enumerate(bar):
                lr = self.scheduler.lr
                loss, logs = self._train_step(batch, epoch, step)
                loss_sum += loss
                steps += 1
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value
                if self._show:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        means = distributed.mean_over_processes(
            {"train_loss": loss_sum / steps, **{f"train_{k}": v / steps for k, v in sums.items()}}, self.device)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": means.pop("train_loss"), "lr": lr}
        for key, value in means.items():
            record.setdefault(key, value)
        record["epoch_time_s"] = time.perf_counter() - start
        return record

    def _train_step(self, batch: Any, epoch: int, step: int) -> tuple[float, dict[str, float]]:
        """One optimizer step; returns the loss value and the step's logs."""
        batch = move_to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self.cfg.amp):
            output = self.step_fn(self.train_model, batch)
        loss, logs = (output, {}) if isinstance(output, Tensor) else output
        logs = _as_float_dict(logs, "step_fn")
        loss_value = float(loss.detach())
        if not self._finite_everywhere(loss_value):
            raise TrainingDiverged(self._non_finite_message(f"non-finite loss ({loss_value})",
                                                            self._where(epoch, step)))

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self._params, self.cfg.clip_grad))
            # with a GradScaler an infinite norm is an overflow it handles (the step is skipped, the scale lowered)
            if not self.scaler.is_enabled() and not math.isfinite(logs["grad_norm"]):
                raise TrainingDiverged(self._non_finite_message(
                    f"non-finite gradient norm ({logs['grad_norm']})", self._where(epoch, step)))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return loss_value, logs

    def _finite_everywhere(self, value: float) -> bool:
        """Whether `value` is finite on every process (so that all of them stop together)."""
        finite = float(math.isfinite(value))
        if self.dist.enabled:
            finite = distributed.mean_over_processes({"finite": finite}, self.device)["finite"]
        return finite == 1.0

    def _check_finite_weights(self, epoch: int) -> None:
        """TrainingDiverged when a weight or buffer of the model (or of its EMA copy) is NaN or infinite."""
        models = {"model": self.model, **({"EMA model": self.ema.module} if self.ema is not None else {})}
        for which, model in models.items():
            bad = [name for name, t in model.state_dict().items()
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            if bad:
                shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
                raise TrainingDiverged(self._non_finite_message(f"non-finite values in the {which}'s {shown}",
                                                                f"the end of epoch {epoch}"))

    def _where(self, epoch: int, step: int) -> str:
        return f"epoch {epoch}, step {step + 1}/{self.steps_per_epoch} (global step {self.global_step})"

    def _non_finite_message(self, what: str, where: str) -> str:
        if self.last_path.is_file() and self.epoch > 0:
            kept = f"{self.last_path} still holds epoch {self.epoch}"
        else:
            kept = "no checkpoint has been written yet"
        return (
            f"{what} at {where}; training stopped and {kept}. "
            "Lower the lr, set clip_grad, or check the batch, then resume."
        )

    # ----------------------------------------------------------------------------------- evaluation
    def _evaluate(self) -> dict[str, float]:
        """Eval metrics, computed on rank 0 and shared with every process."""
        metrics = self._evaluate_here() if self.dist.is_main else None
        return distributed.broadcast_object(metrics)

    def _evaluate_here(self) -> dict[str, float]:
        assert self.eval_fn is not None
        if self.ema is None:
            return self._run_eval(self.model)
        metrics = self._run_eval(self.ema.module)
        if self.cfg.eval_raw:
            metrics.update({f"raw_{k}": v for k, v in self._run_eval(self.model).items()})
        return metrics

    def _run_eval(self, model: nn.Module) -> dict[str, float]:
        assert self.eval_fn is not None
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = _as_float_dict(self.eval_fn(model), "eval_fn")
        model.train(was_training)
        return metrics

    def _save_best_if_improved(self, record: dict[str, Any]) -> None:
        name = self.cfg.best_metric
        if name is None or self.eval_fn is None:
            return
        evaluated = [k for k in record if not k.startswith("train_") and k not in _BOOKKEEPING_KEYS]
        if name not in record:
            if evaluated:
                raise KeyError(f"best_metric {name!r} is not among the eval metrics {evaluated}")
            return
        value = record[name]
        best = self.best_value
        if best is None or (value > best if self.cfg.best_mode == "max" else value < best):
            self.best_value = value
            if not self.dist.is_main:
                return
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": record["epoch"],
                    "metric": name,
                    "value": value,
                    "model": self.model.state_dict(),
                    "ema": self.ema.module.state_dict() if self.ema is not None else None,
                    "config": self.cfg.to_dict(),
                },
                self.best_path,
            )

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly, as tensors and plain python types.

        Under torchrun every process must call it: it gathers each process's RNG states (`rng_ranks`)."""
        rng = get_rng_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "rng_ranks": distributed.gather_objects(rng) if self.dist.enabled else None,
            "config": self.cfg.to_dict(),
            "history": [dict(record) for record in self.history],
            "best_value": self.best_value,
        }

    def _resume_from(self, path: Path) -> None:
        """load_state_dict of the checkpoint at `path`; CheckpointError naming it when it does not fit this run."""
        checkpoint = load_checkpoint(path, map_location="cpu")
        try:
            self.load_state_dict(checkpoint)
        except (ValueError, KeyError, RuntimeError) as err:
            problem = " ".join(str(err).split())[:1000]
            raise CheckpointError(f"{path}: cannot resume from it ({type(err).__name__}: {problem}); "
                                  "start a fresh run in another out_dir, or fix the config") from None

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore a `state_dict()`; warns when config fields that change the result differ."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a vistra trainer checkpoint (format {checkpoint.get('format')!r})")
        self._warn_config_changes(checkpoint["config"], checkpoint["global_step"], checkpoint["epoch"])
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.ema is not None:
            if checkpoint["ema"] is None:
                raise ValueError("the checkpoint has no EMA state but cfg.ema_decay is set")
            self.ema.load_state_dict(checkpoint["ema"])
        if self.scaler.is_enabled() and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        ranks = checkpoint.get("rng_ranks")
        same_world = ranks is not None and len(ranks) == self.dist.world_size
        set_rng_state(ranks[self.dist.rank] if same_world else checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.global_step = int(checkpoint["global_step"])
        self.history = [dict(record) for record in checkpoint["history"]]
        self.best_value = checkpoint["best_value"]

    def _warn_config_changes(self, saved: dict[str, Any], global_step: int, epoch: int) -> None:
        current = self.cfg.to_dict()
        changed = sorted(
            k for k in set(saved) | set(current)
            if k not in _RESUME_FREE_FIELDS and saved.get(k) != current.get(k)
        )
        if changed:
            warnings.warn(
                f"resuming {self.last_path} with changed config fields {changed}: "
                + ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed),
                stacklevel=3,
            )
        if global_step != epoch * self.steps_per_epoch:
            warnings.warn(
                f"{self.last_path} was written with {global_step // max(epoch, 1)} steps per epoch, "
                f"now {self.steps_per_epoch}: the dataset or batch size changed",
                stacklevel=3,
            )
