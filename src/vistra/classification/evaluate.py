"""Top-1 / top-5 accuracy of a classifier over a dataset, and matching a dataset's classes to a model's."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vistra.data.errors import DataError


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """logits (B, K), labels (B,) -> {k: number of rows whose label is among the k highest logits}.

    k larger than K counts every row as correct (top-5 of a 3-class model is 100%).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top == labels.unsqueeze(1)  # (B, kmax)
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def label_map(dataset_classes: Sequence[str], model_classes: Sequence[str], root: str) -> torch.Tensor:
    """(len(dataset_classes),) int64: dataset label -> model class index, matched by class name.

    Raises DataError naming the folder and the classes the model does not know.
    """
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in dataset_classes if c not in index]
    if unknown:
        raise DataError(root, f"classes {unknown[:10]} are not among the model's {len(model_classes)} classes "
                              f"({', '.join(list(model_classes)[:10])}{', ...' if len(model_classes) > 10 else ''})")
    return torch.tensor([index[c] for c in dataset_classes], dtype=torch.long)


def readable_only(dataset, progress: bool = True):
    """An ImageFolderDataset with skip_bad -> a Subset of its readable images (each image is read once here), so
    that bad files are left out of the metrics instead of being replaced by their neighbours; else the dataset."""
    from torch.utils.data import Subset

    if not getattr(dataset, "skip_bad", False):
        return dataset
    dataset.validate(progress=progress)
    bad = set(dataset.bad_files)
    subset = Subset(dataset, [i for i, (path, _) in enumerate(dataset.samples) if path not in bad])
    subset.root = dataset.root  # named by errors
    return subset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    mapping: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, float]:
    """Accuracy of `model` on an (image tensor, label) dataset -> {"top1", "top5" (percent), "loss", "num_images"}.

    `mapping` translates dataset labels to model class indices (see label_map). The model is run in eval
    mode on the device its parameters are on.
    """
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    correct = {1: 0, 5: 0}
    loss_sum, count = 0.0, 0
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)  # (B, 3, H, W), (B,)
        if mapping is not None:
            labels = mapping.to(device)[labels]
        logits = model(images)  # (B, K)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        for k, n in topk_correct(logits, labels).items():
            correct[k] += n
        count += labels.shape[0]
    model.train(was_training)
    if count == 0:
        raise DataError(getattr(dataset, "root", "<dataset>"), "no images to evaluate")
    return {"top1": 100.0 * correct[1] / count, "top5": 100.0 * correct[5] / count, "loss": loss_sum / count,
            "num_images": float(count)}
