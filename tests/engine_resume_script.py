"""Training run used by tests/test_engine.py's kill-and-resume test (not collected by pytest).

Usage: python tests/engine_resume_script.py OUT_DIR EPOCHS [--resume]
Trains a tiny MLP with dropout, EMA and grad clipping; every step sleeps a little so an epoch lasts long
enough (about 0.3 s) to be killed in the middle.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from vistra.engine import TrainConfig, Trainer

STEP_SLEEP_S = 0.004


def build_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(768, 16, generator=generator)
    y = (x[:, :4].sum(dim=1) > 0).long() + 2 * (x[:, 4] > 0).long()  # 4 classes
    return TensorDataset(x, y)


def step_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    time.sleep(STEP_SLEEP_S)
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def main(out_dir: str, epochs: int, resume: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.2), nn.Linear(64, 4))
    cfg = TrainConfig(
        epochs=epochs, batch_size=16, lr=3e-3, weight_decay=0.05, warmup_epochs=1.0, min_lr=1e-5,
        clip_grad=1.0, ema_decay=0.9, seed=7, progress=False, out_dir=out_dir,
    )
    Trainer(model, cfg, build_data(), step_fn).fit(resume=resume)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), resume="--resume" in sys.argv[3:])
