"""Hungarian matcher: optimal (brute force), batched == per image, empty targets, parity with transformers."""
import itertools

import pytest
import torch
import torchvision.ops as tvo

from vistra.detection.matcher import HungarianMatcher


def _outputs(B, Q, C):
    return {"pred_logits": torch.randn(B, Q, C), "pred_boxes": torch.rand(B, Q, 4) * 0.5 + 0.1}


def _targets(sizes, num_classes):
    return [{"labels": torch.randint(0, num_classes, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.1} for n in sizes]


def _reference_cost(logits, boxes, labels, tboxes, focal, w=(1.0, 5.0, 2.0)):
    """Cost of one image written the slow, obvious way: (Q, C), (Q, 4), (T,), (T, 4) -> (Q, T)."""
    Q, T = len(logits), len(labels)
    cost = torch.zeros(Q, T, dtype=torch.float64)
    xyxy = lambda b: tvo.box_convert(b.double(), "cxcywh", "xyxy")  # noqa: E731
    giou = tvo.generalized_box_iou(xyxy(boxes), xyxy(tboxes))
    for q in range(Q):
        for t in range(T):
            if focal:
                p = logits[q, labels[t]].double().sigmoid()
                c = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p**2 * -torch.log(1 - p + 1e-8)
            else:
                c = -logits[q].double().softmax(-1)[labels[t]]
            l1 = (boxes[q].double() - tboxes[t].double()).abs().sum()
            cost[q, t] = w[0] * c + w[1] * l1 - w[2] * giou[q, t]
    return cost


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("Q,T", [(4, 3), (5, 2), (3, 3), (2, 4)])
def test_optimal_vs_brute_force(focal, Q, T):
    C = 4
    for _ in range(5):
        out, tgt = _outputs(1, Q, C), _targets([T], C)
        (qi, ti), = HungarianMatcher(focal=focal)(out, tgt)
        assert len(qi) == len(ti) == min(Q, T)
        cost = _reference_cost(out["pred_logits"][0], out["pred_boxes"][0], tgt[0]["labels"], tgt[0]["boxes"], focal)
        got = cost[qi, ti].sum()
        if Q >= T:  # every target gets a distinct query
            best = min(cost[list(p), range(T)].sum() for p in itertools.permutations(range(Q), T))
        else:  # every query gets a distinct target
            best = min(cost[range(Q), list(p)].sum() for p in itertools.permutations(range(T), Q))
        assert got.item() == pytest.approx(best.item(), abs=1e-5)
        assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)


@pytest.mark.parametrize("focal", [False, True])
def test_cost_matrix_matches_reference(focal):
    out, tgt = _outputs(2, 6, 5), _targets([3, 4], 5)
    cost = HungarianMatcher(focal=focal).cost_matrix(out, tgt)  # (B, Q, T_max)
    assert cost.shape == (2, 6, 4) and cost.device.type == "cpu"
    for i, t in enumerate(tgt):
        ref = _reference_cost(out["pred_logits"][i], out["pred_boxes"][i], t["labels"], t["boxes"], focal)
        torch.testing.assert_close(cost[i, :, : len(t["labels"])].double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_batched_equals_per_image(focal):
    matcher = HungarianMatcher(cost_class=2 if focal else 1, focal=focal)
    out, tgt = _outputs(4, 20, 7), _targets([5, 0, 12, 1], 7)
    batched = matcher(out, tgt)
    for i, t in enumerate(tgt):
        single = matcher({k: v[i : i + 1] for k, v in out.items()}, [t])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
        assert batched[i][0].dtype == batched[i][1].dtype == torch.int64


def test_empty_targets():
    matcher = HungarianMatcher()
    out = _outputs(3, 10, 6)
    some = matcher(out, _targets([0, 2, 0], 5))
    assert [len(q) for q, _ in some] == [0, 2, 0]
    none = matcher(out, _targets([0, 0, 0], 5))
    assert all(q.numel() == 0 and t.numel() == 0 and q.dtype == torch.int64 for q, t in none)


def test_query_indices_sorted_and_in_range():
    out, tgt = _outputs(2, 30, 4), _targets([10, 7], 4)
    for (q, t), target in zip(HungarianMatcher()(out, tgt), tgt):
        assert torch.equal(q, q.sort().values)
        assert q.max() < 30 and t.max() < len(target["labels"])
        assert sorted(t.tolist()) == list(range(len(target["labels"])))  # every target is matched once


def test_half_precision_inputs():
    out, tgt = _outputs(2, 10, 5), _targets([3, 4], 5)
    half = {k: v.bfloat16() for k, v in out.items()}
    got = HungarianMatcher()(half, tgt)
    ref = HungarianMatcher()({k: v.float() for k, v in half.items()}, tgt)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, ref))


def test_errors():
    with pytest.raises(ValueError, match="all three costs"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="target dicts"):
        HungarianMatcher()(_outputs(2, 5, 4), _targets([1], 3))
    out = _outputs(1, 5, 4)
    out["pred_boxes"][0, 0, 2] = float("nan")  # a diverged prediction is reported, not matched silently
    with pytest.raises(ValueError, match="degenerate"):
        HungarianMatcher()(out, _targets([2], 3))


@pytest.mark.parametrize("focal", [False, True])
def test_parity_with_transformers(focal):
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    weights = (2, 5, 2) if focal else (1, 5, 2)
    ref_matcher = (DeformableDetrHungarianMatcher if focal else HFMatcher)(*weights)
    out, tgt = _outputs(3, 25, 9), _targets([4, 0, 11], 9)
    hf_out = {"logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
    hf_tgt = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in tgt]
    ours = HungarianMatcher(*weights, focal=focal)(out, tgt)
    ref = ref_matcher(hf_out, hf_tgt)
    for (q, t), (rq, rt) in zip(ours, ref):
        assert torch.equal(q, rq) and torch.equal(t, rt)
