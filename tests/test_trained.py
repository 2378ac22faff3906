"""vistra.trained: a finished model on disk (weights + description), found from a file or a run folder."""
import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from vistra.checkpoints import CheckpointError, save_checkpoint
from vistra.engine import TrainConfig, Trainer
from vistra.trained import (
    final_weights,
    find_weights,
    read_info,
    read_metadata,
    read_trained,
    save_trained,
    task_of,
    trainer_weights,
)

INFO = {"task": "classify", "model_name": "tiny", "model_kwargs": {"hidden": 8}, "classes": ["a", "b", "c"]}


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_and_read_round_trip(tmp_path):
    model = _tiny()
    path = save_trained(model, tmp_path / "out", INFO)
    assert path == tmp_path / "out" / "model.safetensors"
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == INFO
    assert read_metadata(path)["task"] == "classify" and read_metadata(path)["model"] == "tiny"
    for checkpoint in (path, tmp_path / "out"):  # the file or its folder
        state, info, weights = read_trained(checkpoint)
        assert weights == path and info == INFO and _same(state, model.state_dict())


def test_save_needs_task_and_model_name(tmp_path):
    with pytest.raises(ValueError, match="task"):
        save_trained(_tiny(), tmp_path, {"task": "dance", "model_name": "tiny"})
    with pytest.raises(ValueError, match="model_name"):
        save_trained(_tiny(), tmp_path, {"task": "classify"})
    assert not (tmp_path / "model.safetensors").exists()


def test_description_from_model_json_beside_bare_weights(tmp_path):
    save_checkpoint(_tiny(), tmp_path / "weights.safetensors", model_name="tiny")  # no "info" in the metadata
    assert read_info(tmp_path / "weights.safetensors") == (tmp_path / "weights.safetensors", None)
    (tmp_path / "model.json").write_text(json.dumps(INFO))
    assert read_info(tmp_path / "weights.safetensors")[1] == INFO
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"model\.json: model description is not a JSON object"):
        read_info(tmp_path / "weights.safetensors")
    (tmp_path / "model.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"model\.json: not valid JSON"):
        read_info(tmp_path / "weights.safetensors")


def test_run_folder_lookup_prefers_model_then_best_then_last(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: folder holds none of model.safetensors, best.pt"):
        find_weights(tmp_path)
    for name, expected in (("last.pt", "last.pt"), ("best.pt", "best.pt"), ("model.safetensors", "model.safetensors")):
        (tmp_path / name).write_bytes(b"x")
        assert find_weights(tmp_path) == tmp_path / expected


def test_missing_and_unreadable_files_raise_checkpoint_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for call in (find_weights, read_trained, task_of):
        with pytest.raises(CheckpointError, match=f"{missing}: checkpoint does not exist"):
            call(missing)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=str(broken)):
        read_trained(broken)
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=str(truncated)):
        read_trained(truncated)


def test_task_of(tmp_path):
    save_trained(_tiny(), tmp_path / "cls", INFO)
    assert task_of(tmp_path / "cls") == "classify"
    save_file({"w": torch.zeros(2)}, tmp_path / "det.safetensors", metadata={"task": "detect"})  # no "info"
    assert task_of(tmp_path / "det.safetensors") == "detect"
    save_file({"w": torch.zeros(2)}, tmp_path / "odd.safetensors", metadata={"task": "dance"})
    assert task_of(tmp_path / "odd.safetensors") is None
    torch.save({"model": _tiny().state_dict()}, tmp_path / "bare.pth")
    assert task_of(tmp_path / "bare.pth") is None


def test_foreign_training_dict_with_pickled_args_is_read(tmp_path):
    """Official DETR-style files pickle an argparse Namespace next to the weights; they are not trainer files."""
    model = _tiny()
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-4), "epoch": 3}, tmp_path / "x.pt")
    state, info, _ = read_trained(tmp_path / "x.pt")
    assert info is None and _same(state, model.state_dict())


def _fit_with_ema(tmp_path: Path) -> Trainer:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())

    def step(model, batch):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels), {}

    def evaluate(model):  # a metric that improves at every epoch, so best.pt is the last epoch's
        return {"val_score": float(len(trainer.history) + 1)}

    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, warmup_epochs=0, ema_decay=0.5, best_metric="val_score",
                      progress=False, out_dir=str(tmp_path / "run"))
    trainer = Trainer(_tiny(), cfg, data, step, evaluate)
    trainer.fit()
    return trainer


def test_ema_weights_from_best_and_last(tmp_path):
    trainer = _fit_with_ema(tmp_path)
    ema = {k: v.detach().cpu() for k, v in trainer.ema_model.state_dict().items()}
    raw = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    assert not _same(ema, raw)
    for name in ("best.pt", "last.pt"):  # best.pt stores the EMA weights, last.pt the EMA's state
        state, info, weights = read_trained(trainer.out_dir / name)
        assert weights.name == name and info is None and _same(state, ema), name
    assert _same(read_trained(trainer.out_dir)[0], ema)  # the folder: best.pt
    assert _same(final_weights(trainer), ema)
    assert _same(trainer_weights({"model": raw, "ema": None}), raw)
