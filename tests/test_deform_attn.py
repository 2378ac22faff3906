"""Multi-scale deformable attention: every implementation equals the grid_sample reference (forward and all three
gradients, float32 within 1e-5), passes gradcheck in float64, with padding masks, samples outside the maps and
1x1 levels; the module has the official parameters and initialisation."""
import math

import pytest
import torch
import torch.nn.functional as F

from vistra.layers import deform_attn_native
from vistra.layers.deform_attn import IMPLS, MSDeformAttn, ms_deform_attn, resolve_impl
from vistra.layers.deform_attn_core import as_shape_list

FAST_IMPLS = ["fast", "native"]
SHAPES = [((5, 7), (3, 4), (2, 2), (1, 1)), ((1, 1),), ((4, 1), (1, 6))]


def _inputs(shapes, B=2, M=2, D=3, Lq=5, P=3, dtype=torch.float64, spread=1.6, seed=0, masked=True):
    """Locations spread beyond [0, 1] so that some samples fall partly or wholly outside the maps."""
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=dtype) * spread - (spread - 1) / 2
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=dtype).softmax(-1)
    mask = (torch.rand(B, S, generator=g) < 0.3) if masked else None
    return value, loc, attn, mask


def _native_or_skip(impl):
    if impl == "native" and not deform_attn_native.native_available():
        pytest.skip(f"no C compiler: {deform_attn_native.native_error()}")


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
@pytest.mark.parametrize("shapes", SHAPES)
def test_gradcheck_float64(impl, shapes):
    _native_or_skip(impl)
    value, loc, attn, mask = _inputs(shapes)
    args = [t.requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, shapes, l, a, mask, impl), args)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("shapes", SHAPES)
def test_float32_agrees_with_reference(impl, shapes):
    _native_or_skip(impl)
    value, loc, attn, mask = (t.float() if t.is_floating_point() else t
                              for t in _inputs(shapes, D=8, Lq=40, P=4, dtype=torch.float64))
    results = {}
    for kind in ("reference", impl):
        leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
        out = ms_deform_attn(*leaves[:1], shapes, *leaves[1:], mask, kind)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        results[kind] = [out, *torch.autograd.grad(out, leaves, grad_out)]
    for name, ref, got in zip(["out", "value", "loc", "attn"], results["reference"], results[impl]):
        scale = max(1.0, ref.abs().max().item())  # location gradients are scaled by the map sizes
        assert (ref - got).abs().max().item() <= 1e-5 * scale, name


def test_every_impl_on_the_encoder_shape_of_a_small_image():
    """Every pixel a query, 4 levels (the last 1x1), 8 heads, 4 points, as the encoder runs it."""
    shapes = ((12, 16), (6, 8), (3, 4), (1, 1))
    value, loc, attn, mask = _inputs(shapes, B=2, M=8, D=4, Lq=sum(h * w for h, w in shapes), P=4,
                                     dtype=torch.float32, spread=1.0)
    ref = ms_deform_attn(value, shapes, loc, attn, mask, "reference")
    for impl in FAST_IMPLS + ["auto"]:
        if impl == "native" and not deform_attn_native.native_available():
            continue
        torch.testing.assert_close(ms_deform_attn(value, shapes, loc, attn, mask, impl), ref, atol=1e-5, rtol=0)


def test_bilinear_sampling_by_hand():
    """One level 2x3, one query: at a pixel centre the value itself; between centres the bilinear mix; half a
    pixel outside the map half of the border value; a whole pixel outside nothing."""
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)  # map [[0, 1, 2], [3, 4, 5]]
    points = [((0.5 / 3, 0.25), 0.0), ((1.5 / 3, 0.75), 4.0), ((1.0 / 3, 0.25), 0.5), ((1 / 3, 0.5), 2.0),
              ((0.0, 0.75), 1.5), ((-0.5 / 3, 0.75), 0.0), ((1 + 1 / 3, 0.25), 0.0)]
    for impl in ["reference", *FAST_IMPLS]:
        if impl == "native" and not deform_attn_native.native_available():
            continue
        for (x, y), expected in points:
            loc = torch.tensor([x, y], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
            out = ms_deform_attn(value, [(2, 3)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64), impl=impl)
            assert out.item() == pytest.approx(expected, abs=1e-12), (impl, x, y)


def test_padding_mask_hides_the_padded_values():
    shapes = ((4, 4), (2, 2))
    value, loc, attn, _ = _inputs(shapes, dtype=torch.float32)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, 12:16] = True  # the last row of level 0
    changed = value.clone()
    changed[:, 12:16] += 100.0
    for impl in ["reference", "auto"]:
        a = ms_deform_attn(value, shapes, loc, attn, mask, impl)
        b = ms_deform_attn(changed, shapes, loc, attn, mask, impl)
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, ms_deform_attn(changed, shapes, loc, attn, None, impl))


def test_bad_inputs_are_refused_with_clear_errors():
    value, loc, attn, _ = _inputs(((3, 3),))
    with pytest.raises(ValueError, match="value has 9 rows"):
        ms_deform_attn(value, [(3, 4)], loc, attn)
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn(value, [(3, 3)], loc, attn[..., :1, :].expand(2, 5, 2, 2, 3))
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(value, [(3, 3)], loc, attn, impl="cuda")
    with pytest.raises(ValueError, match="positive"):
        as_shape_list([(0, 3)])
    assert as_shape_list(torch.tensor([[3, 3]])) == ((3, 3),)


def test_auto_picks_native_on_cpu_when_it_builds():
    value = torch.zeros(1, 1, 1, 1)
    expected = "native" if deform_attn_native.native_available() else "fast"
    assert resolve_impl("auto", value) == expected
    assert resolve_impl("auto", value.half()) == "fast"
    assert set(IMPLS) == {"auto", "reference", "fast", "native"}


def test_module_official_parameters_and_initialisation():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    names = {n for n, _ in attn.named_parameters()}
    assert names == {f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
                     for p in ("weight", "bias")}
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)  # (heads, levels, points, xy)
    assert torch.equal(offsets[:, 0], offsets[:, 1])  # the same ring on every level
    torch.testing.assert_close(offsets[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # head 0 along +x
    torch.testing.assert_close(offsets[1, 0, 0], torch.tensor([math.cos(math.pi / 2) / 1.0, 1.0]), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().sum() == 0 and attn.attention_weights.weight.abs().sum() == 0


def test_module_forward_points_and_boxes_and_backward():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    shapes = [(4, 5), (2, 3)]
    memory = torch.randn(2, 26, 32, requires_grad=True)
    query = torch.randn(2, 7, 32)
    points = torch.rand(2, 7, 2, 2)
    boxes = torch.cat([torch.rand(2, 7, 2, 2), torch.rand(2, 7, 2, 2) * 0.3], -1)
    for ref in (points, boxes):
        out = attn(query, ref, memory, shapes)
        assert out.shape == (2, 7, 32)
        attn.impl = "reference"
        torch.testing.assert_close(attn(query, ref, memory, shapes), out, atol=1e-5, rtol=0)
        attn.impl = "auto"
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())
    with pytest.raises(ValueError, match="must end in 2"):
        attn(query, torch.rand(2, 7, 2, 3), memory, shapes)
    # the paper's ring at initialisation, uniform weights: outputs depend on the memory
    assert F.mse_loss(out, torch.zeros_like(out)) > 0
