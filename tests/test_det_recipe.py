"""Detection end to end: COCO AP through pycocotools, rendering, the training recipe, eval and predict."""
import json
from functools import partial

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from vistra.data.batching import collate_detection
from vistra.data.coco import build_coco
from vistra.data.det_transforms import build_det_eval_transform
from vistra.data.digits_det import make_digits_det
from vistra.detection.evaluate import COCO_STATS, evaluate_coco, focal_postprocess, predict_coco, write_coco_results
from vistra.detection.eval_predict import eval_detect, load_detector, predict_detect
from vistra.detection.recipe import (
    DetRecipe,
    criterion_for,
    output_layout,
    param_groups_for,
    resolve_config,
    shipped_metrics,
    train_config,
    train_detect,
)
from vistra.detection.render import class_colour, draw_detections
from vistra.trained import read_trained

TINY_DETR = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
             "dim_feedforward": 64, "num_queries": 8, "num_classes": 10}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_det")
    make_digits_det(root, n_train=16, n_val=6, seed=0)
    return root


@pytest.fixture(scope="module")
def val_set(digits):
    return build_coco(digits, "val", transforms=build_det_eval_transform(96, 200), quiet=True)


class GroundTruthModel(nn.Module):
    """A stand-in detector that answers each image, in dataset order, with its ground-truth boxes (optionally
    jittered) and confident classes; the other queries predict "no object" (softmax) or low scores (focal)."""

    def __init__(self, targets, num_classes=10, num_queries=12, jitter=0.0, focal=False):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the evaluator a device
        self.queue = list(targets)
        self.num_classes, self.num_queries, self.jitter, self.focal = num_classes, num_queries, jitter, focal
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, images, mask=None):
        B, Q, C = images.shape[0], self.num_queries, self.num_classes
        logits = torch.full((B, Q, C if self.focal else C + 1), -8.0)
        if not self.focal:
            logits[..., -1] = 8.0  # "no object"
        boxes = torch.full((B, Q, 4), 0.05)
        for b in range(B):
            target = self.queue.pop(0)
            n = len(target["labels"])
            noise = (torch.rand(n, 4, generator=self.generator) * 2 - 1) * self.jitter
            boxes[b, :n] = target["boxes"] * (1 + noise)
            logits[b, torch.arange(n), target["labels"]] = 8.0
            if not self.focal:
                logits[b, :n, -1] = -8.0
        return {"pred_logits": logits, "pred_boxes": boxes}


def _targets(dataset):
    return [dataset[i][1] for i in range(len(dataset))]


# ------------------------------------------------------------------------------------------- COCO AP
def test_ground_truth_answers_score_ap_1_through_pycocotools(val_set):
    targets = _targets(val_set)
    stats = evaluate_coco(GroundTruthModel(targets), val_set, progress=False)
    assert list(stats) == list(COCO_STATS)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["AR100"] == pytest.approx(1.0)
    # through a DataLoader, and with a ground truth rebuilt from the targets (no .coco to find)
    loader = DataLoader(val_set, batch_size=4, collate_fn=collate_detection)
    assert evaluate_coco(GroundTruthModel(targets), loader, progress=False)["AP"] == pytest.approx(1.0)
    plain = [val_set[i] for i in range(len(val_set))]
    assert evaluate_coco(GroundTruthModel(targets), plain, progress=False)["AP"] == pytest.approx(1.0)


def test_jittered_boxes_score_lower_and_only_evaluated_images_count(val_set):
    targets = _targets(val_set)
    stats = evaluate_coco(GroundTruthModel(targets, jitter=0.15), val_set, progress=False)
    assert 0.05 < stats["AP"] < 0.9 and stats["AP50"] > stats["AP75"]
    half = Subset(val_set, range(3))  # found through the Subset; the other images are not scored
    assert evaluate_coco(GroundTruthModel(targets[:3]), half, progress=False)["AP"] == pytest.approx(1.0)


class ShiftedModel(nn.Module):
    """Answers each image (in dataset order) with its ground-truth boxes moved right by SHIFTS[j % 6] of their
    width, query j scored by softmax(logits) with logit LOGIT(j) for the true class and 0 for "no object"."""

    SHIFTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # IoU with the truth: 1, .82, .67, .54, .43, .33

    def __init__(self, targets, num_classes=10, num_queries=12):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.queue, self.num_classes, self.num_queries = list(targets), num_classes, num_queries

    @staticmethod
    def logits_of(j, label, num_classes=10):
        logits = torch.full((num_classes + 1,), -8.0)
        logits[label], logits[-1] = 2.0 - 0.25 * j, 0.0
        return logits

    def forward(self, images, mask=None):
        B, Q = images.shape[0], self.num_queries
        logits = torch.full((B, Q, self.num_classes + 1), -8.0)
        logits[..., -1] = 8.0
        boxes = torch.full((B, Q, 4), 0.05)
        for b in range(B):
            target = self.queue.pop(0)
            for j, (box, label) in enumerate(zip(target["boxes"], target["labels"].tolist())):
                boxes[b, j] = box + torch.tensor([self.SHIFTS[j % 6] * float(box[2]), 0, 0, 0])
                logits[b, j] = self.logits_of(j, label, self.num_classes)
        return {"pred_logits": logits, "pred_boxes": boxes}


def test_shifted_boxes_score_the_ap_pycocotools_computes_directly(val_set):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    stats = evaluate_coco(ShiftedModel(_targets(val_set)), val_set, progress=False)
    # the same detections written by hand from the json, scored by COCOeval without vistra in between
    truth = COCO(str(val_set.ann_file))
    detections = []
    for image_id in val_set.ids:
        for j, ann in enumerate(truth.imgToAnns[image_id]):
            x, y, w, h = ann["bbox"]
            score = float(ShiftedModel.logits_of(j, ann["category_id"]).softmax(-1)[ann["category_id"]])
            detections.append({"image_id": image_id, "category_id": ann["category_id"], "score": score,
                               "bbox": [x + ShiftedModel.SHIFTS[j % 6] * w, y, w, h]})
    direct = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
    direct.evaluate()
    direct.accumulate()
    direct.summarize()
    assert 0.1 < stats["AP"] < 0.9  # a real mix of hits and misses, not a degenerate case
    assert [stats[k] for k in COCO_STATS] == pytest.approx(list(direct.stats), abs=1e-6)


def test_focal_heads_use_the_top_k_postprocess(val_set):
    model = GroundTruthModel(_targets(val_set), focal=True)
    stats = evaluate_coco(model, val_set, focal_postprocess(top_k=50), progress=False)
    assert stats["AP"] == pytest.approx(1.0)


def test_results_are_coco_format_in_original_pixels(val_set, tmp_path):
    results, seen = predict_coco(GroundTruthModel(_targets(val_set)), val_set, progress=False)
    assert [t["image_id"] for t in seen] == val_set.ids
    first = val_set.coco.loadAnns(val_set.coco.getAnnIds(imgIds=[seen[0]["image_id"]]))
    ours = [r for r in results if r["image_id"] == seen[0]["image_id"] and r["score"] > 0.5]
    assert sorted(a["category_id"] for a in first) == sorted(r["category_id"] for r in ours)
    for gt, det in zip(sorted(first, key=lambda a: a["bbox"]), sorted(ours, key=lambda r: r["bbox"])):
        assert det["bbox"] == pytest.approx(gt["bbox"], abs=0.01)
    path = write_coco_results(results, tmp_path / "out" / "results.json")
    assert len(val_set.coco.loadRes(str(path)).getAnnIds()) == len(results)


def test_no_detections_score_zero(val_set):
    model = GroundTruthModel(_targets(val_set), focal=True)  # best scores sigmoid(8) = 0.9997
    stats = evaluate_coco(model, val_set, partial(focal_postprocess(), threshold=0.9999), progress=False)
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


# ------------------------------------------------------------------------------------------ rendering
def test_render_draws_class_coloured_boxes_and_tags():
    image = Image.new("RGB", (120, 90), (255, 255, 255))
    drawn = draw_detections(image, [[10, 30, 60, 80]], [3], [0.87], class_names=[str(d) for d in range(10)])
    assert drawn.size == image.size and image.getpixel((10, 50)) == (255, 255, 255)  # the input is untouched
    assert drawn.getpixel((10, 55)) == class_colour(3) and drawn.getpixel((35, 55)) == (255, 255, 255)
    above = [drawn.getpixel((x, y)) for x in range(10, 40) for y in range(15, 30)]
    assert above.count(class_colour(3)) > 50  # the tag's background, above the box
    assert class_colour(3) != class_colour(4)
    assert draw_detections(image, torch.zeros(0, 4), []).size == (120, 90)


# ---------------------------------------------------------------------------------------------- recipe
def test_official_learning_rates_per_family():
    import vistra
    import vistra.detection.detr  # noqa: F401  (registers the presets)

    detr = vistra.create_model("detr", **TINY_DETR)
    cfg = train_config(detr, {}, "unused")
    assert (cfg.lr, cfg.weight_decay, cfg.clip_grad, cfg.epochs, cfg.lr_drop_epochs) == (1e-4, 1e-4, 0.1, 300, [200])
    groups = param_groups_for(detr, cfg, DetRecipe())
    backbone = {id(p) for n, p in detr.named_parameters() if n.startswith("backbone.") and p.requires_grad}
    assert backbone and all(g["lr_scale"] == pytest.approx(0.1) for g in groups
                            if any(id(p) in backbone for p in g["params"]))
    assert sorted({round(g["lr_scale"], 6) for g in groups}) == [0.1, 1.0]

    class FakeDeformable(nn.Module):
        arch = "deformable_detr"

        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.sampling_offsets = nn.Linear(2, 2)
            self.layer = nn.ModuleDict({"reference_points": nn.Linear(2, 2), "other": nn.Linear(2, 2)})

    deformable = FakeDeformable()
    cfg = train_config(deformable, {"epochs": 3}, "unused")
    assert (cfg.lr, cfg.epochs, cfg.lr_drop_epochs) == (2e-4, 3, [40])
    scale = {id(p): g["lr_scale"] for g in param_groups_for(deformable, cfg, DetRecipe()) for p in g["params"]}
    by_name = {n: scale[id(p)] for n, p in deformable.named_parameters()}
    assert by_name["backbone.weight"] == pytest.approx(0.1)
    assert by_name["sampling_offsets.weight"] == by_name["layer.reference_points.bias"] == pytest.approx(0.1)
    assert by_name["layer.other.weight"] == 1.0


def test_criterion_matches_the_model_outputs():
    import vistra
    import vistra.detection.detr  # noqa: F401

    model = vistra.create_model("detr", **{**TINY_DETR, "dec_layers": 3})
    assert output_layout(model) == (2, False)

    class NoConfig(nn.Module):  # no config: the layout comes from a dry forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images, mask=None):
            return self.inner(images, mask)

    assert output_layout(NoConfig(model)) == (2, False)
    outputs = model(torch.randn(2, 3, 64, 64))
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    losses = criterion_for(model, 10)(outputs, targets)
    assert "loss_ce_1" in losses and torch.isfinite(losses["loss"])


def test_unknown_settings_are_refused_with_the_known_keys():
    recipe, train = resolve_config({"scales": [64], "model.hidden_dim": 32, "criterion.eos_coef": 0.2, "lr": 1e-3,
                                    "aug.hflip": 0.0, "train.epochs": 2})
    assert recipe.scales == [64] and recipe.model_kwargs == {"hidden_dim": 32} and recipe.hflip == 0.0
    assert recipe.criterion_kwargs == {"eos_coef": 0.2} and train == {"lr": 1e-3, "epochs": 2}
    with pytest.raises(ValueError, match="unknown detection setting 'scale'.*recipe keys"):
        resolve_config({"scale": 3})


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one intra-op thread on a busy shared CPU (as CI runners are)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_eval_predict_on_tiny_digits(digits, tmp_path, one_thread):
    overrides = {**{f"model.{k}": v for k, v in TINY_DETR.items() if k != "num_classes"},
                 "scales": [80, 96], "max_size": 128, "crop_resize": [96], "crop_size": [64, 96], "hflip": 0.0,
                 "eval_size": 80, "eval_max_size": 128, "max_val_images": 4, "epochs": 3, "batch_size": 4,
                 "lr": 2e-4, "eval_every": 3, "progress": False}
    out = train_detect("detr", digits, tmp_path / "run", overrides)
    losses = [r["train_loss"] for r in out["history"]]
    assert losses[-1] < losses[0], losses
    assert set(COCO_STATS) <= set(out["history"][-1]) and set(out["metrics"]) == {"epoch", *COCO_STATS}
    assert out["model_path"] == str(tmp_path / "run" / "model.safetensors")
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["task"] == "detect" and info["model_name"] == "detr" and info["num_classes"] == 10
    assert info["classes"] == {str(d): str(d) for d in range(10)} and info["recipe"]["eval_size"] == 80

    model, loaded = load_detector(tmp_path / "run")
    assert loaded["classes"][3] == "3" and loaded["model_kwargs"]["hidden_dim"] == 32 and not model.training
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())  # the best epoch's weights ship

    stats = eval_detect(tmp_path / "run", digits, overrides={"max_val_images": 4}, progress=False,
                        results_path=tmp_path / "res.json")
    assert stats["num_images"] == 4 and stats["AP"] == pytest.approx(out["metrics"]["AP"])
    assert isinstance(json.loads((tmp_path / "res.json").read_text()), list)
    last = eval_detect(tmp_path / "run" / "last.pt", digits, overrides={"max_val_images": 4}, progress=False)
    assert last["AP"] == pytest.approx(out["history"][-1]["AP"])  # a mid-run checkpoint reads the run's model.json

    report = predict_detect(digits / "val", tmp_path / "run" / "model.safetensors", tmp_path / "pred",
                            threshold=0.0, progress=False)
    records = report["predictions"]
    assert len(records) == 6 and all(len(r["detections"]) == 8 for r in records) and report["skipped"] == []
    first = Image.open(records[0]["rendered"])
    assert first.size == Image.open(records[0]["image"]).size
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(saved) == 6 * 8 and {"image_id", "category_id", "bbox", "score", "file_name"} <= set(saved[0])


def test_shipped_metrics_are_the_best_evaluation_or_the_last():
    history = [{"epoch": 1, "train_loss": 3.0}, {"epoch": 2, "AP": 0.3, "AP50": 0.5},
               {"epoch": 3, "AP": 0.2, "AP50": 0.6}]
    assert shipped_metrics(history, "AP") == {"epoch": 2, "AP": 0.3, "AP50": 0.5}
    assert shipped_metrics(history, None) == {"epoch": 3, "AP": 0.2, "AP50": 0.6}
    assert shipped_metrics(history[:1], "AP") == {}


def test_foreign_weights_load_when_the_model_is_named(tmp_path):
    import vistra
    from vistra.checkpoints import CheckpointError

    official = vistra.create_model("detr_resnet50", num_classes=91)  # the official COCO shape: 92 logits
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": official.state_dict(), "epoch": 499}, path)  # an official-style checkpoint, no description
    with pytest.raises(CheckpointError, match="does not say which detector.*--model"):
        load_detector(path)
    model, info = load_detector(path, model_name="detr_resnet50")
    assert info["num_classes"] == 91 and info["classes"] == {} and model.class_embed.out_features == 92
    assert torch.equal(model.query_embed.weight, official.query_embed.weight)


def test_the_same_seed_trains_the_same_detector(digits, tmp_path, one_thread):
    """Initial weights come from the run's seed, not from whatever ran before in the process."""
    overrides = {**{f"model.{k}": v for k, v in TINY_DETR.items() if k != "num_classes"}, "scales": [64],
                 "max_size": 96, "crop_resize": None, "hflip": 0.0, "val_split": None, "max_train_images": 8,
                 "epochs": 1, "batch_size": 4, "progress": False}
    states = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(100 + len(states))  # a different global state before each run
        train_detect("detr", digits, tmp_path / name, {**overrides, "seed": seed})
        states.append(read_trained(tmp_path / name)[0])
    a, b, c = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
