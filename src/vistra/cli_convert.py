"""`vistra convert SRC DST --model NAME`: any supported checkpoint -> vistra safetensors."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from vistra.checkpoints import (
    CheckpointError,
    LoadReport,
    convert_state_dict,
    detect_format,
    load_pretrained,
    read_checkpoint,
    save_checkpoint,
)
from vistra.checkpoints.convert import PARTIAL_FORMATS


def run_convert(src: str | Path, dst: str | Path, model_name: str, **overrides) -> LoadReport:
    """Build model_name, load src (any format; CheckpointError when it does not fit), save vistra safetensors to
    dst and print a one-line summary. The classifier size follows the file: a checkpoint fine-tuned on K classes
    gives a model with num_classes=K, one without a classifier gives num_classes=0 (stored in the metadata).

    Formats vistra shares only in part (PARTIAL_FORMATS: official TransCenter) load what converts; the model's
    other modules keep their initialisation and are named in the summary and in the metadata ("fresh"), while a
    converted tensor that does not fit the model (name or shape) is still an error."""
    from vistra.registry import create_model

    state, _ = read_checkpoint(src)
    partial = detect_format(state) in PARTIAL_FORMATS
    model = create_model(model_name, **overrides)
    if "num_classes" not in overrides and hasattr(model, "reset_classifier"):
        num_classes = _num_classes(convert_state_dict(state), model)
        if num_classes is not None:
            model = create_model(model_name, num_classes=num_classes, **overrides)
    del state
    report = load_pretrained(model, src, strict=not partial)  # read again so that errors name the file
    fresh = _fresh_modules(model, report, src, model_name) if partial else []
    metadata = {"source": Path(src).name}
    if fresh:
        metadata["fresh"] = ", ".join(fresh)
    if hasattr(model, "num_classes"):
        metadata["num_classes"] = str(model.num_classes)
    save_checkpoint(model, dst, model_name=model_name, metadata=metadata)
    params = sum(p.numel() for p in model.parameters())
    extra = f", {model.num_classes} classes" if hasattr(model, "num_classes") else ""
    extra += "".join(f", {k} {tuple(a)} -> {tuple(b)}" for k, a, b in report.resized)
    extra += f", dropped {len(report.dropped)} unused tensors" if report.dropped else ""
    extra += f"; kept as initialised: {', '.join(fresh)}" if fresh else ""
    print(f"converted {src} ({report.format}, {report.loaded} tensors) -> {dst} as {model_name} "
          f"({params / 1e6:.1f}M parameters{extra})")
    return report


def _num_classes(state: dict, model) -> int | None:
    """The checkpoint's number of classes when it differs from the model's (0 when it has no classifier)."""
    weight = state.get("head.weight")
    if weight is None:
        return 0 if "head.weight" in model.state_dict() else None
    return int(weight.shape[0]) if weight.shape[0] != getattr(model, "num_classes", None) else None


def _fresh_modules(model, report: LoadReport, src, model_name: str) -> list[str]:
    """The model's top-level modules that the file left (wholly or partly) as initialised; CheckpointError when a
    converted tensor does not fit the model."""
    bad = [f"{k}: {tuple(a)} in the file vs {tuple(b)} in the model" for k, a, b in report.mismatched]
    bad += [f"{k}: not in the model" for k in report.unexpected]
    if bad:
        more = f"; ... ({len(bad) - 10} more)" if len(bad) > 10 else ""
        raise CheckpointError(f"{src}: {len(bad)} converted tensors ({report.format}) do not fit {model_name}: "
                              f"{'; '.join(bad[:10])}{more}; build the model with the file's sizes (see the README)")
    total = Counter(k.split(".")[0] for k in model.state_dict())
    left = Counter(k.split(".")[0] for k in report.missing)
    return [name if n == total[name] else f"{name} ({n} of {total[name]} tensors)" for name, n in left.items()]
