"""Segmentation metrics (confusion matrix vs brute force, across processes) and whole / sliding-window inference."""
import math
import multiprocessing

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import vistra
from vistra.segmentation import ConfusionMatrix, slide_inference, whole_inference
from vistra.segmentation.inference import segment, window_starts


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, oversubscribed threads make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _brute_force(pred, target, k, ignore):
    """Per-class IoU / accuracy and pixel accuracy by counting pixels class by class."""
    keep = target != ignore
    ious, accs, correct = [], [], 0
    for c in range(k):
        inter = np.sum((pred == c) & (target == c) & keep)
        union = np.sum(((pred == c) | (target == c)) & keep)
        gt = np.sum((target == c) & keep)
        ious.append(inter / union if union else math.nan)
        accs.append(inter / gt if gt else math.nan)
        correct += inter
    return ious, accs, correct / keep.sum() if keep.sum() else math.nan


def _check_against_brute_force(got, pred, target, k):
    ious, accs, pixel_acc = _brute_force(pred, target, k, 255)
    np.testing.assert_allclose(got["per_class_iou"], ious, equal_nan=True)
    np.testing.assert_allclose(got["per_class_acc"], accs, equal_nan=True)
    expected_miou = np.nanmean(ious) if not np.all(np.isnan(ious)) else math.nan
    np.testing.assert_allclose(got["mIoU"], expected_miou, equal_nan=True)
    np.testing.assert_allclose(got["pixel_acc"], pixel_acc, equal_nan=True)


def _random_case(k, shape, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=shape)
    target[rng.random(shape) < 0.2] = 255
    pred = rng.integers(0, k, size=shape)
    return pred, target


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
       seed=st.integers(0, 2**31 - 1), splits=st.integers(1, 3))
def test_confusion_matrix_matches_brute_force(k, shape, seed, splits):
    pred, target = _random_case(k, shape, seed)
    matrix = ConfusionMatrix(k)
    for p, t in zip(np.array_split(pred, splits), np.array_split(target, splits)):  # accumulation over updates
        matrix.update(torch.from_numpy(p), torch.from_numpy(t))
    _check_against_brute_force(matrix.compute(), pred, target, k)


def test_confusion_matrix_logits_absent_classes_reset_and_bad_labels():
    matrix = ConfusionMatrix(4)
    logits = torch.zeros(1, 4, 1, 3)
    logits[0, 1, 0, :2] = 1  # predicts 1, 1, 0
    matrix.update(logits, torch.tensor([[[1, 0, 0]]]))
    out = matrix.compute()
    assert out["per_class_iou"][:2] == [0.5, 0.5] and math.isnan(out["per_class_iou"][2])
    assert out["mIoU"] == 0.5  # classes 2 and 3 appear nowhere: left out of the mean
    assert out["pixel_acc"] == pytest.approx(2 / 3) and out["mean_acc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"target holds values \[7\]"):
        matrix.update(torch.zeros(2, dtype=torch.long), torch.tensor([7, 255]))
    with pytest.raises(ValueError, match=r"pred holds values \[4\]"):
        matrix.update(torch.tensor([4, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="does not match target shape"):
        matrix.update(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    matrix.reset()
    assert math.isnan(matrix.compute()["mIoU"]) and matrix.matrix.sum() == 0


def _rank_main(rank, world, init_file, pred, target, k, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        matrix = ConfusionMatrix(k)
        matrix.update(torch.from_numpy(pred[rank::world]), torch.from_numpy(target[rank::world]))
        matrix.all_reduce()
        queue.put((rank, matrix.compute()))
    finally:
        dist.destroy_process_group()


def test_confusion_matrix_sums_over_processes(tmp_path):
    k = 5
    pred, target = _random_case(k, (6, 9, 11), seed=3)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, tmp_path / "init", pred, target, k, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank in range(2):  # every process holds the metrics of the whole set
        _check_against_brute_force(results[rank], pred, target, k)
    assert ConfusionMatrix(k).all_reduce() is None  # not distributed here: a no-op


# --------------------------------------------------------------------------------------------- inference
def test_window_starts_cover_the_image():
    assert window_starts(100, 40, 30) == [0, 30, 60]  # last window flush with the border: 60 + 40 = 100
    assert window_starts(101, 40, 30) == [0, 30, 60, 61]
    assert window_starts(30, 40, 30) == [0]  # smaller than the crop: one window
    assert window_starts(64, 32, 32) == [0, 32]
    for size, crop, stride in [(97, 33, 17), (50, 50, 7), (13, 5, 4)]:
        starts = window_starts(size, crop, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s: s + crop] = True
        assert covered.all() and starts[-1] + crop == size
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_slide_equals_whole_for_a_pointwise_model_with_sizes_not_divisible_by_the_stride():
    model = torch.nn.Conv2d(3, 4, 1)  # receptive field of one pixel: windows cannot change the answer
    images = torch.randn(2, 3, 70, 95)
    whole = whole_inference(model, images)
    torch.testing.assert_close(slide_inference(model, images, (32, 40), (20, 25)), whole)
    resized = slide_inference(model, images, 48, 30, out_size=(35, 50))
    torch.testing.assert_close(resized, whole_inference(model, images, out_size=(35, 50)))


def test_slide_averages_overlapping_windows():
    class WindowId(torch.nn.Module):  # outputs, everywhere in a window, the window's count so far
        calls = 0

        def forward(self, x):
            WindowId.calls += 1
            return torch.full((x.shape[0], 1, *x.shape[-2:]), float(WindowId.calls))

    out = slide_inference(WindowId(), torch.zeros(1, 3, 4, 6), crop_size=4, stride=2)  # windows at x = 0, 2
    assert out[0, 0, 0].tolist() == [1, 1, 1.5, 1.5, 2, 2]


@pytest.mark.parametrize("name", ["semfpn_pvt_v2_digits", "seg_vit_tiny_patch16_linear"])
def test_slide_with_a_crop_covering_the_image_equals_whole(name):
    model = vistra.create_model(name, num_classes=3, img_size=32).eval()
    images = torch.randn(1, 3, 40, 50)  # not a multiple of the stride either way
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(model, images, 64, 32), whole_inference(model, images))
        torch.testing.assert_close(segment(model, images, "slide", (40, 50), 7), segment(model, images, "whole"))
        sliding = slide_inference(model, images, 32, 24)  # real windows: same shape, finite, different
        assert sliding.shape == (1, 3, 40, 50) and sliding.isfinite().all()


def test_segment_rejects_bad_modes():
    model = torch.nn.Conv2d(3, 2, 1)
    with pytest.raises(ValueError, match="unknown inference mode"):
        segment(model, torch.zeros(1, 3, 4, 4), "tiles")
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        segment(model, torch.zeros(1, 3, 4, 4), "slide")
    with pytest.raises(ValueError, match="must be positive"):
        slide_inference(model, torch.zeros(1, 3, 4, 4), 0, 2)
