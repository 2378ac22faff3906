"""Training run used by tests/test_distributed.py (not collected by pytest); launched plainly or by torchrun.

Usage: python tests/ddp_train_script.py OUT_DIR BATCH_SIZE EPOCHS [--resume] [--exit-at-step N]
Trains a small MLP regressor (no dropout, so one process and two see the same randomness) on 64 fixed samples.
--exit-at-step N makes rank 1 (rank 0 when alone) die abruptly at global step N, as a killed node would.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from vistra.engine import TrainConfig, Trainer


def build_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(64, 8, generator=generator)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] * x[:, 2:3]
    return TensorDataset(x, y)


def main(argv: list[str]) -> None:
    out_dir, batch_size, epochs = argv[0], int(argv[1]), int(argv[2])
    exit_at = int(argv[argv.index("--exit-at-step") + 1]) if "--exit-at-step" in argv else None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 1))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    def step_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if exit_at is not None and trainer.global_step == exit_at and rank == min(1, world - 1):
            os._exit(3)
        x, y = batch
        return F.mse_loss(m(x), y)

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-2, weight_decay=0.01, warmup_epochs=0.5,
                      min_lr=1e-4, clip_grad=1.0, ema_decay=0.9, seed=3, progress=False, out_dir=out_dir)
    trainer = Trainer(model, cfg, build_data(), step_fn)
    trainer.fit(resume="--resume" in argv)
    if trainer.dist.is_main:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, "final.pt"))


if __name__ == "__main__":
    main(sys.argv[1:])
