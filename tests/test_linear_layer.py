"""vistra.layers.Linear: nn.Linear with an opt-in inference path on MKL-packed weights, and use_packed_weights."""
import pytest
import torch
import torch.nn.functional as F

import vistra.layers.linear as linear_module
from vistra import create_model
from vistra.layers import Linear, packed_weights_supported, use_packed_weights

needs_mkl = pytest.mark.skipif(not packed_weights_supported(), reason="this torch build has no MKL")


def _layer() -> Linear:
    torch.manual_seed(0)
    layer = Linear(48, 80).eval()
    assert use_packed_weights(layer) == 1
    return layer


def test_linear_keeps_nn_linear_parameters_and_is_off_by_default():
    layer = Linear(4, 3, bias=False)
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == ["weight"] and not layer.packed
    x = torch.randn(2, 4)
    with torch.inference_mode():
        layer(x), layer(x)
    assert layer._pack is None


@needs_mkl
def test_packed_path_packs_on_the_second_call_with_a_row_count_and_matches_f_linear():
    layer = _layer()
    x = torch.randn(2, 7, 48)  # 14 rows
    with torch.inference_mode():
        first = layer(x)
        assert layer._pack is None  # a row count seen once is not packed for
        second = layer(x)
        assert layer._pack is not None and layer._pack[0][0] == 14
        other = layer(torch.randn(5, 48))  # another row count: plain product, the packed copy kept
        assert layer._pack[0][0] == 14 and other.shape == (5, 80)
        assert layer(torch.randn(0, 48)).shape == (0, 80)
    expected = F.linear(x, layer.weight, layer.bias)
    assert first.shape == second.shape == (2, 7, 80)
    assert (first - expected).abs().max() < 1e-5 and (second - expected).abs().max() < 1e-5


@needs_mkl
def test_packed_copy_follows_weight_changes():
    layer = _layer()
    x = torch.randn(9, 48)
    with torch.inference_mode():
        layer(x), layer(x)
    new = {"weight": torch.randn(80, 48), "bias": torch.randn(80)}
    layer.load_state_dict(new)
    with torch.inference_mode():
        out = layer(x)
    assert (out - F.linear(x, new["weight"], new["bias"])).abs().max() < 1e-5


@needs_mkl
def test_packed_path_is_skipped_with_autograd_and_gradients_flow():
    layer = _layer().train()
    x = torch.randn(6, 48, requires_grad=True)
    for _ in range(2):
        out = layer(x)
    out.sum().backward()
    assert layer._pack is None and layer.weight.grad is not None and x.grad is not None
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(6, 48))


@needs_mkl
def test_use_packed_weights_on_a_vit_gives_the_same_logits_and_can_be_undone():
    model = create_model("vit_tiny_patch16_224", num_classes=5).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)
        assert use_packed_weights(model) == 4 * 12  # qkv, proj, fc1, fc2 in each block
        model(x)
        packed = model(x)
        assert sum(m._pack is not None for m in model.modules() if isinstance(m, Linear)) >= 4 * 11
    assert (packed - expected).abs().max() < 1e-4
    assert use_packed_weights(model, enabled=False) == 48
    assert all(m._pack is None and not m.packed for m in model.modules() if isinstance(m, Linear))


def test_use_packed_weights_refuses_a_build_without_mkl(monkeypatch):
    monkeypatch.setattr(linear_module, "packed_weights_supported", lambda: False)
    with pytest.raises(ValueError, match="need a torch build with MKL"):
        linear_module.use_packed_weights(Linear(2, 2))


@needs_mkl
def test_packed_path_works_on_a_model_built_under_inference_mode():
    with torch.inference_mode():
        layer = Linear(8, 4).eval()
        use_packed_weights(layer)
        x = torch.randn(3, 8)
        layer(x)
        assert (layer(x) - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5 and layer._pack is not None
