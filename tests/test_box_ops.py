"""Box conversions, IoU and GIoU: round trips, properties (hypothesis) and torchvision as the oracle."""
import pytest
import torch
import torchvision.ops as tvo
from hypothesis import given, settings
from hypothesis import strategies as st

from vistra.detection.box_ops import (
    aligned_generalized_box_iou,
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def xyxy_boxes(draw, n_min=1, n_max=6):
    """(n, 4) float64 xyxy boxes with positive width and height (valid for IoU/GIoU)."""
    n = draw(st.integers(n_min, n_max))
    coord = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    size = st.floats(1e-2, 10, allow_nan=False, allow_infinity=False)
    xywh = draw(st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n))
    rows = [[x, y, x + w, y + h] for x, y, w, h in xywh]
    return torch.tensor(rows, dtype=torch.float64)


@SETTINGS
@given(xyxy_boxes())
def test_round_trip(boxes):
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    torch.testing.assert_close(box_area(boxes), cxcywh[:, 2] * cxcywh[:, 3])


def test_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 8.0]]))
    # enclosing boxes: 3x3 = 9 and 6x2 = 12
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 0 - 4 / 12]]))
    xyxy = box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4]))
    torch.testing.assert_close(xyxy, torch.tensor([0.4, 0.3, 0.6, 0.7]))


@SETTINGS
@given(xyxy_boxes(), xyxy_boxes())
def test_iou_giou_properties(a, b):
    iou, _ = box_iou(a, b)
    giou = generalized_box_iou(a, b)  # (N, M)
    assert giou.shape == (len(a), len(b))
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= 1 + 1e-12)).all()
    assert (giou <= iou + 1e-12).all()  # the enclosing-box penalty is never negative
    torch.testing.assert_close(giou, generalized_box_iou(b, a).T)  # symmetric
    torch.testing.assert_close(generalized_box_iou(a, a).diagonal(), torch.ones(len(a), dtype=a.dtype))
    torch.testing.assert_close(aligned_generalized_box_iou(a, a), torch.ones(len(a), dtype=a.dtype))
    # torchvision is the oracle
    torch.testing.assert_close(iou, tvo.box_iou(a, b))
    torch.testing.assert_close(giou, tvo.generalized_box_iou(a, b))


@SETTINGS
@given(xyxy_boxes(n_min=3, n_max=3), xyxy_boxes(n_min=3, n_max=3))
def test_aligned_is_diagonal_of_pairwise(a, b):
    torch.testing.assert_close(aligned_generalized_box_iou(a, b), generalized_box_iou(a, b).diagonal())


def test_batch_dims_equal_per_item():
    a = box_cxcywh_to_xyxy(torch.rand(3, 5, 4) * 0.5 + 0.1)  # (B, N, 4)
    b = box_cxcywh_to_xyxy(torch.rand(3, 7, 4) * 0.5 + 0.1)  # (B, M, 4)
    giou = generalized_box_iou(a, b)
    assert giou.shape == (3, 5, 7)
    for i in range(3):
        torch.testing.assert_close(giou[i], generalized_box_iou(a[i], b[i]))
        torch.testing.assert_close(box_iou(a, b)[0][i], box_iou(a[i], b[i])[0])


def test_empty_sets():
    a, e = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros(0, 4)
    assert generalized_box_iou(a, e).shape == (1, 0)
    assert generalized_box_iou(e, a).shape == (0, 1)
    assert aligned_generalized_box_iou(e, e).shape == (0,)


@pytest.mark.parametrize("bad", [[0.5, 0.0, 0.4, 1.0], [0.0, 0.5, 1.0, 0.4], [float("nan"), 0.0, 1.0, 1.0]])
def test_degenerate_boxes_raise(bad):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(good, torch.tensor([bad]))
    with pytest.raises(ValueError, match="boxes1"):
        aligned_generalized_box_iou(torch.tensor([bad]), good)


def test_half_precision_is_upcast():
    a = box_cxcywh_to_xyxy(torch.rand(4, 4) * 0.5 + 0.1)
    b = box_cxcywh_to_xyxy(torch.rand(6, 4) * 0.5 + 0.1)
    a, b = (a * 1000).half(), (b * 1000).half()  # pixel-sized: fp16 areas would lose precision / overflow
    out = generalized_box_iou(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, generalized_box_iou(a.float(), b.float()))
