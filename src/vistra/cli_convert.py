"""`vistra convert SRC DST --model NAME`: any supported checkpoint -> vistra safetensors."""
from __future__ import annotations

from pathlib import Path

from vistra.checkpoints import LoadReport, convert_state_dict, load_pretrained, read_checkpoint, save_checkpoint


def run_convert(src: str | Path, dst: str | Path, model_name: str, **overrides) -> LoadReport:
    """Build model_name, load src (any format; CheckpointError when it does not fit), save vistra safetensors to
    dst and print a one-line summary. The classifier size follows the file: a checkpoint fine-tuned on K classes
    gives a model with num_classes=K, one without a classifier gives num_classes=0 (stored in the metadata)."""
    from vistra.registry import create_model

    state, _ = read_checkpoint(src)
    model = create_model(model_name, **overrides)
    if "num_classes" not in overrides and hasattr(model, "reset_classifier"):
        num_classes = _num_classes(convert_state_dict(state), model)
        if num_classes is not None:
            model = create_model(model_name, num_classes=num_classes, **overrides)
    del state
    report = load_pretrained(model, src)  # read again so that errors name the file
    metadata = {"source": Path(src).name}
    if hasattr(model, "num_classes"):
        metadata["num_classes"] = str(model.num_classes)
    save_checkpoint(model, dst, model_name=model_name, metadata=metadata)
    params = sum(p.numel() for p in model.parameters())
    extra = f", {model.num_classes} classes" if hasattr(model, "num_classes") else ""
    extra += "".join(f", {k} {tuple(a)} -> {tuple(b)}" for k, a, b in report.resized)
    extra += f", dropped {len(report.dropped)} unused tensors" if report.dropped else ""
    print(f"converted {src} ({report.format}, {report.loaded} tensors) -> {dst} as {model_name} "
          f"({params / 1e6:.1f}M parameters{extra})")
    return report


def _num_classes(state: dict, model) -> int | None:
    """The checkpoint's number of classes when it differs from the model's (0 when it has no classifier)."""
    weight = state.get("head.weight")
    if weight is None:
        return 0 if "head.weight" in model.state_dict() else None
    return int(weight.shape[0]) if weight.shape[0] != getattr(model, "num_classes", None) else None
