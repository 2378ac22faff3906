"""Data-parallel training through torchrun on 2 CPU processes (gloo): same result as one process with the same
global batch, and a killed distributed run resumes exactly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vistra.engine import distributed

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


def _run(args: list[str], nproc: int | None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc is None:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(SCRIPT), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final.pt", weights_only=True)


def test_single_process_context_is_a_no_op():
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    assert distributed.mean_over_processes({"a": 2.0}, torch.device("cpu")) == {"a": 2.0}
    assert distributed.gather_objects(7) == [7]
    assert distributed.broadcast_object("x") == "x"


def test_two_processes_match_one_process_with_the_same_global_batch_and_resume_exactly(tmp_path):
    single, ddp, killed = tmp_path / "single", tmp_path / "ddp", tmp_path / "killed"
    _run([str(single), "8", "3"], nproc=None)
    _run([str(ddp), "4", "3"], nproc=2)
    one, two = _final(single), _final(ddp)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5, msg=key)
    last = torch.load(ddp / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and len(last["rng_ranks"]) == 2 and last["ema"] is not None
    assert not (ddp / ".last.pt.tmp").exists() and sorted(p.name for p in ddp.glob("*.pt")) == ["final.pt", "last.pt"]

    # 8 steps per epoch per process; die in the middle of epoch 2, then resume from epoch 1's checkpoint
    died = _run([str(killed), "4", "3", "--exit-at-step", "12"], nproc=2, check=False)
    assert died.returncode != 0
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 1
    _run([str(killed), "4", "3", "--resume"], nproc=2)
    resumed = _final(killed)
    for key in two:
        assert torch.equal(resumed[key], two[key]), key
