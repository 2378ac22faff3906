"""layers.dropout: a cheap CPU dropout mask with torch's dropout semantics, and attention with weight dropout."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vistra.layers.dropout import Dropout, attention, drop_mask, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_mask_rate_is_one_minus_p_in_every_lane(p):
    torch.manual_seed(0)
    n = 400_003  # not a multiple of the four lanes of a draw
    drop, keep = drop_mask((n,), p)
    assert drop.dtype == torch.bool and drop.shape == (n,)
    assert abs(keep - (1 - p)) <= 1 / 65536
    sigma = math.sqrt(keep * (1 - keep) / (n / 4))
    for lane in range(4):  # each 16-bit lane of the 64-bit draws is uniform
        assert abs((~drop[lane::4]).float().mean().item() - keep) < 5 * sigma


def test_drop_mask_follows_the_seed():
    torch.manual_seed(3)
    a, _ = drop_mask((7, 9), 0.3)
    torch.manual_seed(3)
    b, _ = drop_mask((7, 9), 0.3)
    c, _ = drop_mask((7, 9), 0.3)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_dropout_zeroes_or_scales_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5
    x.requires_grad_()
    out = dropout(x, 0.1)
    kept = out != 0
    keep = kept.float().mean().item()
    assert abs(keep - 0.9) < 0.005
    torch.testing.assert_close(out[kept], x[kept] / (1 - round(0.1 * 65536) / 65536))
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.01
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, (out / x).detach())  # the same mask and scale in the backward pass


def test_dropout_off_and_edge_cases():
    x = torch.randn(4, 5)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))  # torch's own dropout at p = 1
    ints = torch.arange(6)
    with pytest.raises(RuntimeError):
        dropout(ints, 0.5)  # torch's dropout refuses integer tensors, and so does this one


def test_dropout_module_is_nn_dropout():
    module = Dropout(0.2)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.2))
    x = torch.randn(3, 4)
    assert module.eval()(x) is x
    torch.manual_seed(1)
    a = module.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(a, dropout(x, 0.2))


def test_attention_matches_sdpa_without_dropout_and_drops_weights_with_it():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False  # padding keys
    torch.testing.assert_close(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    torch.manual_seed(5)
    out = attention(q, k, v, mask, dropout_p=0.3)
    torch.manual_seed(5)
    drop, keep = drop_mask((2, 4, 6, 6), 0.3)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, (weights * ~drop / keep) @ v)


def test_attention_query_without_keys_gives_zeros():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    q.requires_grad_()
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    mask[..., 1, :] = False  # query 1 may attend to no key
    out = attention(q, k, v, mask, dropout_p=0.2)
    assert torch.equal(out[:, :, 1], torch.zeros(1, 2, 4)) and out[:, :, 0].abs().sum() > 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
