"""Tests of vistra.engine: schedules, param groups, EMA, clipping, logs, checkpoints and exact resumption."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from vistra.checkpoints import CheckpointError
from vistra.engine import (
    ModelEma,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    atomic_save,
    build_lr_fn,
    build_param_groups,
    load_checkpoint,
)
from vistra.engine.optim import cosine_with_warmup, step_with_warmup

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and without thread contention on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyMLP(nn.Module):
    def __init__(self, in_dim: int = 8, hidden: int = 32, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, in_dim))  # 2-D: no decay only via no_weight_decay()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos
        return self.fc2(self.drop(F.gelu(self.norm(self.fc1(x)))))


def make_data(n: int = 256, in_dim: int = 8, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 learnable classes
    return TensorDataset(x, y)


def ce_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def make_eval(data: TensorDataset):
    def eval_fn(model: nn.Module) -> dict[str, float]:
        x, y = data.tensors
        logits = model(x)
        return {"val_acc": (logits.argmax(1) == y).float().mean().item(), "val_loss": F.cross_entropy(logits, y).item()}

    return eval_fn


def make_cfg(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(epochs=3, batch_size=32, lr=1e-2, weight_decay=0.05, warmup_epochs=0.5, min_lr=1e-5,
                  seed=0, progress=False, out_dir=str(tmp_path / "run"))
    values.update(overrides)
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------- config
def test_config_validation_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epochs": 2, "lrr": 0.1})
    cfg = TrainConfig(schedule="step", lr_drop_epochs=[3, 5], out_dir=tmp_path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg.write_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == cfg


# -------------------------------------------------------------------------------------------- schedules
def test_cosine_schedule_warmup_peak_and_end() -> None:
    cfg = TrainConfig(epochs=10, lr=1e-3, min_lr=1e-6, warmup_epochs=2.0)
    lr_at = build_lr_fn(cfg, steps_per_epoch=5)  # 50 steps, 10 of warmup
    lrs = [lr_at(s) for s in range(50)]
    assert lrs[0] == pytest.approx(1e-4)  # warmup starts near 0
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rises linearly
    assert max(lrs) == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-3)  # peak at the end of warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays
    assert lrs[-1] == pytest.approx(1e-6)  # last step at min_lr
    assert cosine_with_warmup(30, base_lr=1.0, min_lr=0.0, warmup_steps=10, total_steps=51) == pytest.approx(0.5)


def test_step_schedule_drops() -> None:
    cfg = TrainConfig(epochs=6, lr=1.0, schedule="step", lr_drop_epochs=[2, 4], lr_drop_factor=0.1, warmup_epochs=0)
    lr_at = build_lr_fn(cfg, steps_per_epoch=10)
    assert [lr_at(s) for s in (0, 19, 20, 39, 40, 59)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert step_with_warmup(0, base_lr=1.0, warmup_steps=4, steps_per_epoch=10, drop_epochs=[], drop_factor=0.1) == 0.25


# ----------------------------------------------------------------------------------------- param groups
def test_param_groups_decay_and_lr_scale(tmp_path: Path) -> None:
    model = TinyMLP()
    groups = build_param_groups(model, weight_decay=0.05, lr_scales={"fc1.*": 0.1, "norm": 0.5})
    by_param = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert by_param[id(names["fc1.weight"])]["weight_decay"] == 0.05
    assert by_param[id(names["fc2.weight"])]["weight_decay"] == 0.05
    for no_decay in ("fc1.bias", "fc2.bias", "norm.weight", "norm.bias", "pos"):
        assert by_param[id(names[no_decay])]["weight_decay"] == 0.0, no_decay
    assert by_param[id(names["fc1.weight"])]["lr_scale"] == 0.1
    assert by_param[id(names["fc1.bias"])]["lr_scale"] == 0.1
    assert by_param[id(names["norm.weight"])]["lr_scale"] == 0.5
    assert by_param[id(names["fc2.weight"])]["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(names)
    with pytest.raises(ValueError, match="backbone"):
        build_param_groups(model, 0.05, {"backbone.*": 0.1})

    # The trainer applies schedule lr * lr_scale to every group at every step.
    cfg = make_cfg(tmp_path, epochs=2)
    trainer = Trainer(model, cfg, make_data(), ce_step, param_groups=groups)
    trainer.fit()
    lr_at = build_lr_fn(cfg, trainer.steps_per_epoch)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(lr_at(trainer.global_step) * group["lr_scale"])


# ------------------------------------------------------------------------------------- training loop
def test_loss_falls_and_logs_are_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = make_data()
    cfg = make_cfg(tmp_path, epochs=4, best_metric="val_acc")
    history = Trainer(TinyMLP(), cfg, data, ce_step, eval_fn=make_eval(data)).fit()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert {"train_loss", "lr", "train_acc", "val_acc", "val_loss"} <= set(history[-1])

    out = Path(cfg.out_dir)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    assert (out / "curves.png").stat().st_size > 0
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    best = load_checkpoint(out / "best.pt")
    assert best["value"] == max(r["val_acc"] for r in history)


def test_last_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, epochs=1, ema_decay=0.9, clip_grad=1.0)
    trainer = Trainer(TinyMLP(), cfg, make_data(), ce_step)
    trainer.fit()
    checkpoint = torch.load(Path(cfg.out_dir) / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "ema", "rng", "epoch", "global_step", "config", "history"):
        assert key in checkpoint, key
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == trainer.steps_per_epoch
    assert checkpoint["config"] == cfg.to_dict()
    assert set(checkpoint["rng"]) >= {"torch", "numpy", "python"}


def test_ema_tracks_model(tmp_path: Path) -> None:
    model = TinyMLP()
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, 0.75 * before[key] + 0.25 * model.state_dict()[key])

    trainer = Trainer(TinyMLP(), make_cfg(tmp_path, ema_decay=0.9), make_data(), ce_step)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.ema_model is not None and not trainer.ema_model.training
    for key, value in trainer.ema_model.state_dict().items():
        trained = trainer.model.state_dict()[key]
        assert not torch.equal(value, trained), key  # the average lags the model...
        assert (value - trained).norm() < (initial[key] - trained).norm(), key  # ...but has followed it


def test_grad_clipping_bounds_norm(tmp_path: Path) -> None:
    def loud_step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        loss, logs = ce_step(model, batch)
        return loss * 1e4, logs

    trainer = Trainer(TinyMLP(), make_cfg(tmp_path, epochs=1, clip_grad=0.5), make_data(), loud_step)
    norms: list[float] = []

    def record_norm(optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer.optimizer.register_step_pre_hook(record_norm)
    history = trainer.fit()
    assert len(norms) == trainer.steps_per_epoch
    assert max(norms) <= 0.5 * (1 + 1e-5)
    assert history[0]["train_grad_norm"] > 0.5  # the logged norm is the one before clipping


def test_non_finite_loss_raises_and_keeps_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def exploding_step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        calls["n"] += 1
        loss, logs = ce_step(model, batch)
        return (loss * float("nan") if calls["n"] > 10 else loss), logs  # 8 steps per epoch

    cfg = make_cfg(tmp_path, epochs=3)
    with pytest.raises(RuntimeError, match=r"non-finite loss .* epoch 2, step 3/8"):
        Trainer(TinyMLP(), cfg, make_data(), exploding_step).fit()
    assert load_checkpoint(Path(cfg.out_dir) / "last.pt")["epoch"] == 1


def _step_with_infinite_gradients_at(call: int):
    """ce_step whose loss stays finite but whose gradients are infinite on the `call`-th call."""
    calls = {"n": 0}

    def step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        calls["n"] += 1
        x, y = batch
        logits = model(x)
        if calls["n"] == call:
            logits.register_hook(lambda grad: grad * float("inf"))
        return F.cross_entropy(logits, y), {}

    return step


def test_infinite_gradients_on_the_last_step_of_an_epoch_never_reach_last_pt(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, epochs=3)  # 8 steps per epoch: call 16 is the last step of epoch 2
    with pytest.raises(TrainingDiverged, match=r"non-finite values in the model's .* at the end of epoch 2; "
                                               r".*last\.pt still holds epoch 1"):
        Trainer(TinyMLP(), cfg, make_data(), _step_with_infinite_gradients_at(16)).fit()
    saved = load_checkpoint(Path(cfg.out_dir) / "last.pt")
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_infinite_gradient_norm_stops_before_the_optimizer_step(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, epochs=2, clip_grad=1.0, ema_decay=0.9)
    trainer = Trainer(TinyMLP(), cfg, make_data(), _step_with_infinite_gradients_at(11))
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm \((nan|inf)\) at epoch 2, step 3/8"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the step was not taken
    assert load_checkpoint(Path(cfg.out_dir) / "last.pt")["epoch"] == 1


def test_resume_from_a_truncated_foreign_or_malicious_last_pt_is_a_checkpoint_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, epochs=1)
    Trainer(TinyMLP(), cfg, make_data(), ce_step).fit()
    last = Path(cfg.out_dir) / "last.pt"
    good = last.read_bytes()

    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt: truncated or corrupt checkpoint"):
        Trainer(TinyMLP(), cfg, make_data(), ce_step).fit(resume=True)

    last.write_bytes(good)
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot resume from it .*size mismatch for fc1.weight"):
        Trainer(TinyMLP(hidden=16), cfg, make_data(), ce_step).fit(resume=True)

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save({"format": "vistra.engine/1", "model": {}, "extra": Payload()}, last)
    with pytest.raises(CheckpointError, match=r"last\.pt: holds objects that .* refuses to build"):
        Trainer(TinyMLP(), cfg, make_data(), ce_step).fit(resume=True)
    assert not marker.exists()


def test_data_order_and_worker_randomness_depend_only_on_seed_and_epoch(tmp_path: Path) -> None:
    class RandomItems(Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor([float(i), torch.rand(()).item()])

    def epoch_items(trainer: Trainer, epoch: int) -> torch.Tensor:
        return torch.cat(list(trainer.build_loader(epoch)))

    cfg = make_cfg(tmp_path, batch_size=4, num_workers=2)
    first = Trainer(TinyMLP(), cfg, RandomItems(), ce_step)
    second = Trainer(TinyMLP(), cfg, RandomItems(), ce_step)
    epoch2 = epoch_items(first, 2)
    epoch_items(second, 1)  # history must not matter
    assert torch.equal(epoch_items(second, 2), epoch2)
    assert not torch.equal(epoch_items(first, 3), epoch2)


def test_amp_on_cpu_trains_in_bfloat16(tmp_path: Path) -> None:
    dtypes: list[torch.dtype] = []

    def step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        x, y = batch
        logits = model(x)
        dtypes.append(logits.dtype)
        return F.cross_entropy(logits.float(), y), {}

    trainer = Trainer(TinyMLP(), make_cfg(tmp_path, epochs=1, amp=True, device="cpu"), make_data(), step)
    history = trainer.fit()
    assert set(dtypes) == {torch.bfloat16}
    assert math.isfinite(history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_custom_sampler_gets_set_epoch(tmp_path: Path) -> None:
    class RecordingSampler(torch.utils.data.Sampler):
        def __init__(self, n: int) -> None:
            self.n, self.epochs = n, []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self) -> int:
            return self.n

    sampler = RecordingSampler(64)
    Trainer(TinyMLP(), make_cfg(tmp_path, epochs=2), make_data(), ce_step, sampler=sampler).fit()
    assert sampler.epochs[-2:] == [1, 2]


# ------------------------------------------------------------------------------------------ checkpoints
def test_atomic_save_keeps_previous_file_on_failure(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    path = tmp_path / "ck.pt"
    atomic_save({"w": torch.arange(3)}, path)
    atomic_save({"w": torch.arange(4)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"w": torch.zeros(10_000), "bad": Unpicklable()}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4))


def _final_state(out_dir: Path) -> dict:
    return load_checkpoint(out_dir / "last.pt")


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    if a["ema"] is not None:
        for key, value in a["ema"]["module"].items():
            assert torch.equal(value, b["ema"]["module"][key]), f"ema {key}"
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), f"optimizer {index} {key}"
    strip = lambda history: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in history]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_resume_after_exception_matches_uninterrupted_run(tmp_path: Path) -> None:
    def run(out: str, interrupt_at: int | None, resume: bool) -> None:
        calls = {"n": 0}

        def step(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return ce_step(model, batch)

        torch.manual_seed(0)
        cfg = make_cfg(tmp_path, out_dir=str(tmp_path / out), ema_decay=0.8, clip_grad=1.0)
        Trainer(TinyMLP(dropout=0.3), cfg, make_data(), step).fit(resume=resume)

    run("straight", None, resume=False)
    with pytest.raises(KeyboardInterrupt):
        run("interrupted", 13, resume=False)  # 8 steps per epoch: mid-epoch 2
    assert _final_state(tmp_path / "interrupted")["epoch"] == 1
    run("interrupted", None, resume=True)
    _assert_same_training(_final_state(tmp_path / "straight"), _final_state(tmp_path / "interrupted"))
    lines = (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    epochs = 5
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"

    def start(out_dir: Path, *flags: str) -> subprocess.Popen:
        log = open(tmp_path / f"{out_dir.name}{''.join(flags)}.log", "wb")
        command = [sys.executable, str(TESTS_DIR / "engine_resume_script.py"), str(out_dir), str(epochs), *flags]
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    straight, victim = start(straight_dir), start(killed_dir)
    try:
        deadline = time.monotonic() + 90
        while _checkpoint_epoch(killed_dir / "last.pt") < 1:
            assert victim.poll() is None, "training exited before writing epoch 1: see killed.log"
            assert time.monotonic() < deadline, "no checkpoint of epoch 1 within 90 s"
            time.sleep(0.01)
        time.sleep(0.1)  # into the next epoch (one lasts about 0.3 s)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "training finished before it could be killed"
        killed_at = _checkpoint_epoch(killed_dir / "last.pt")
        assert 1 <= killed_at < epochs

        resumed = start(killed_dir, "--resume")
        assert resumed.wait(timeout=120) == 0, (tmp_path / "killed--resume.log").read_text()
        assert straight.wait(timeout=120) == 0, (tmp_path / "straight.log").read_text()
    finally:
        for process in (straight, victim):
            if process.poll() is None:
                process.kill()
    assert not list(killed_dir.glob(".*.tmp"))
    _assert_same_training(_final_state(straight_dir), _final_state(killed_dir))
    assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == epochs
