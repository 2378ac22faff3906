"""TransCenter-style tracker model and its center-based targets, losses and decoding."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import vistra
from vistra.tracking import centernet
from vistra.tracking.transcenter import TransCenter

TINY = {"d_model": 32, "n_heads": 4, "n_points": 2, "dec_layers": 1, "dim_feedforward": 64, "head_channels": 16,
        "impl": "fast"}


def _tiny(**kw) -> TransCenter:
    torch.manual_seed(0)
    return vistra.create_model("transcenter_pvt_v2_b0", **{**TINY, **kw})


def test_presets_registered_and_built_on_pvt_v2():
    assert {"transcenter", "transcenter_pvt_v2_b0", "transcenter_pvt_v2_b2"} <= set(vistra.list_models("transcenter*"))
    model = _tiny()
    assert model.config.backbone == "pvt_v2_b0" and model.backbone.strides == [4, 8, 16, 32]
    assert vistra.create_model("transcenter", backbone="pvt_v2_b1", **TINY).config.backbone == "pvt_v2_b1"


def test_forward_any_size_with_padding_and_backward_reaches_every_parameter():
    model = _tiny(num_classes=3)
    images = torch.randn(2, 3, 70, 98)
    mask = torch.zeros(2, 70, 98, dtype=torch.bool)
    mask[1, 50:], mask[1, :, 80:] = True, True
    out = model(images, images.roll(3, -1), mask, mask)
    h, w = out["hm"].shape[-2:]
    assert (h, w) == (math.ceil(70 / 4), math.ceil(98 / 4))
    assert out["hm"].shape[:2] == (2, 3) and all(out[k].shape == (2, 2, h, w) for k in ("wh", "reg", "tracking"))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_first_frame_defaults_previous_to_current_and_encode_is_reusable():
    model = _tiny().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(images)
        enc = model.encode(images)
        b = model.decode(enc, enc)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_padding_does_not_change_the_unpadded_result_much():
    """An image padded with a mask gives nearly the result of the image alone on the common region."""
    model = _tiny().eval()
    image = torch.randn(1, 3, 64, 64)
    padded = torch.zeros(1, 3, 64, 96)
    padded[..., :64] = image
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[..., 64:] = True
    with torch.no_grad():
        alone = model(image)["hm"]
        pad = model(padded, mask=mask)["hm"][..., :16]
    # conv backbones see the zero padding at the border, so only the interior is compared
    torch.testing.assert_close(pad[..., 2:-2, 2:-4], alone[..., 2:-2, 2:-4], atol=0.15, rtol=0)


def test_gaussian_radius_is_centernets_formula():
    """CenterNet's radius (which TransCenter's code uses as is), worked by hand for a 10 x 10 box: the smallest of
    its three quadratic roots is the third, (-28 + sqrt(28^2 + 4 * 2.8 * 30)) / 2 = 2.7332; it grows with the box."""
    assert centernet.gaussian_radius(10, 10, 0.7) == pytest.approx((-28 + math.sqrt(784 + 336)) / 2, rel=1e-9)
    sizes = [(3, 3), (10, 10), (20, 6), (40, 90)]
    radii = [centernet.gaussian_radius(h, w) for h, w in sizes]
    assert all(r > 0 for r in radii) and radii[1] < radii[3] and radii[0] < radii[1]


def test_draw_gaussian_peak_symmetry_and_max():
    hm = torch.zeros(9, 9)
    centernet.draw_gaussian(hm, 4, 4, 2)
    assert hm[4, 4] == 1 and torch.equal(hm, hm.flip(0)) and torch.equal(hm, hm.t())
    assert hm[4, 5] < 1 and hm[0, 0] == 0
    centernet.draw_gaussian(hm, 0, 0, 1)  # at the border: clipped, takes the max with what is there
    assert hm[0, 0] == 1 and hm[4, 4] == 1


def test_focal_loss_matches_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.rand(2, 3, 5, 6) * 0.9
    target[0, 1, 2, 3] = target[1, 2, 4, 5] = 1
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4).tolist()
    target_values = target.tolist()
    total = 0.0
    for idx in itertools.product(*map(range, logits.shape)):
        pi = p[idx[0]][idx[1]][idx[2]][idx[3]]
        ti = target_values[idx[0]][idx[1]][idx[2]][idx[3]]
        if ti == 1:
            total += -math.log(pi) * (1 - pi) ** 2
        else:
            total += -math.log(1 - pi) * pi ** 2 * (1 - ti) ** 4
    assert centernet.focal_loss(logits, target).item() == pytest.approx(total / 2, rel=1e-5)


def _gt():
    return [{
        "boxes": torch.tensor([[8.0, 12.0, 40.0, 44.0], [50.0, 20.0, 62.0, 60.0]]),
        "labels": torch.tensor([0, 1]),
        "track_ids": torch.tensor([7, 9]),
        "prev_boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0]]),
        "prev_track_ids": torch.tensor([7]),
    }]


def test_targets_then_decode_round_trip():
    """Maps written from the targets decode back to the same boxes, labels and previous centers."""
    t = centernet.build_targets(_gt(), num_classes=2, out_size=(20, 20), stride=4)
    assert t["mask"].sum() == 2 and t["tracking_mask"].sum() == 1
    assert t["hm"][0, 0].max() == 1 and t["hm"][0, 1].max() == 1
    idx = t["index"][0, :2]
    maps = {k: torch.zeros(1, 2, 20, 20) for k in ("wh", "reg", "tracking")}
    for k in maps:
        maps[k].flatten(2)[0, :, idx] = t[k][0, :2].t()
    hm = torch.full((1, 2, 20, 20), -10.0)
    hm.flatten(2)[0, 0, idx[0]] = hm.flatten(2)[0, 1, idx[1]] = 10.0
    (res,) = centernet.decode({"hm": hm, **maps}, stride=4, max_objects=5, score_threshold=0.5)
    order = res["labels"].argsort()
    torch.testing.assert_close(res["boxes"][order], _gt()[0]["boxes"])
    assert res["labels"][order].tolist() == [0, 1]
    torch.testing.assert_close(res["prev_centers"][order][0], torch.tensor([20.0, 28.0]))  # prev box centre


def test_ignored_regions_drop_the_background_loss_there_and_keep_centers():
    """An ignore box (KITTI DontCare) zeroes hm_weight on every output cell it touches; confident peaks there
    cost nothing, the same peaks outside do, and an object center inside still counts as a positive."""
    gt = _gt()
    gt[0]["ignore_boxes"] = torch.tensor([[0.0, 60.0, 30.0, 79.0], [2.0, 5.0, 3.0, 6.0]])  # cells y 15-19 x 0-7; (0, 1)
    t = centernet.build_targets(gt, num_classes=2, out_size=(20, 20), stride=4)
    expected = torch.ones(20, 20)
    expected[15:20, 0:8] = 0
    expected[1, 0] = 0
    assert torch.equal(t["hm_weight"][0, 0], expected)
    assert torch.equal(t["hm"], centernet.build_targets(_gt(), 2, (20, 20), 4)["hm"])  # targets unchanged
    base = torch.full((1, 2, 20, 20), -6.0)
    inside, outside = base.clone(), base.clone()
    inside[0, :, 16, 3] = 6.0  # confident false peaks in the ignored region
    outside[0, :, 5, 15] = 6.0  # ... and outside it
    loss = lambda logits: centernet.focal_loss(logits, t["hm"], t["hm_weight"]).item()  # noqa: E731
    assert loss(inside) == pytest.approx(loss(base), rel=1e-6)
    assert loss(outside) > loss(base) + 1
    assert centernet.focal_loss(inside, t["hm"]).item() > loss(base) + 1  # without the weight they would cost
    # a center inside an ignored region keeps its positive term
    covered = _gt()
    covered[0]["ignore_boxes"] = covered[0]["boxes"][:1]
    tc = centernet.build_targets(covered, 2, (20, 20), 4)
    center = tc["index"][0, 0]
    assert tc["hm_weight"][0, 0].flatten()[center] == 0 and tc["hm"][0, 0].flatten()[center] == 1
    low = torch.full((1, 2, 20, 20), -6.0)
    high = low.clone()
    high[0, 0].view(-1)[center] = 6.0
    assert centernet.focal_loss(low, tc["hm"], tc["hm_weight"]) > centernet.focal_loss(high, tc["hm"], tc["hm_weight"]) + 1


def test_losses_are_zero_for_perfect_maps_and_positive_otherwise():
    t = centernet.build_targets(_gt(), num_classes=2, out_size=(20, 20), stride=4)
    idx = t["index"][0, :2]
    maps = {k: torch.zeros(1, 2, 20, 20) for k in ("wh", "reg", "tracking")}
    for k in maps:
        maps[k].flatten(2)[0, :, idx] = t[k][0, :2].t()
    perfect = centernet.center_losses({"hm": torch.full((1, 2, 20, 20), -20.0), **maps}, t)
    assert perfect["wh"] == 0 and perfect["reg"] == 0 and perfect["tracking"] == 0
    noisy = centernet.center_losses({"hm": torch.zeros(1, 2, 20, 20), **{k: v + 1 for k, v in maps.items()}}, t)
    assert noisy["wh"] == pytest.approx(1.0) and noisy["tracking"] == pytest.approx(1.0)
    assert noisy["loss"] > perfect["loss"]


def test_training_on_a_moving_square_lowers_the_loss():
    torch.manual_seed(0)
    model = _tiny()
    prev = torch.zeros(2, 3, 64, 64)
    cur = torch.zeros(2, 3, 64, 64)
    prev[:, :, 16:32, 10:26] = 1.0
    cur[:, :, 16:32, 14:30] = 1.0
    targets = [{"boxes": torch.tensor([[14.0, 16.0, 30.0, 32.0]]), "labels": torch.tensor([0]),
                "track_ids": torch.tensor([1]), "prev_boxes": torch.tensor([[10.0, 16.0, 26.0, 32.0]]),
                "prev_track_ids": torch.tensor([1])}] * 2
    t = centernet.build_targets(targets, 1, (16, 16), 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        loss = centernet.center_losses(model(cur, prev), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
