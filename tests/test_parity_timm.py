"""timm checkpoints load into vistra and give the same logits (timm is the oracle; random weights, no download).

pvt_tiny (v1) has no timm model: it is checked against transformers in test_parity_hf.py.
"""
import functools

import pytest
import torch
from safetensors.torch import save_file

import vistra
from vistra.checkpoints import load_pretrained

timm = pytest.importorskip("timm")

TOL = 1e-4
VIT = ["vit_tiny_patch16_224", "vit_small_patch16_224"]
PVT_V2 = ["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2_li"]


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter, so zero-initialised heads and biases are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


@functools.lru_cache(maxsize=None)
def timm_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return perturb(timm.create_model(name, pretrained=False))


def save(state: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def input_for(name: str, seed: int = 1) -> torch.Tensor:
    """ViT needs its native 224; PVTv2 takes any size, and a small one keeps the test fast."""
    size = 224 if name.startswith("vit") else 96
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VIT + PVT_V2)
def test_same_logits_from_pth_and_safetensors(name, tmp_path):
    ref = timm_model(name)
    x = input_for(name)
    with torch.no_grad():
        expected = ref(x)
    assert expected.abs().max() > 0.1  # a real signal, not a zero head
    pth = save(ref.state_dict(), tmp_path / f"{name}.pth")
    model = vistra.create_model(name, pretrained=pth).eval()
    with torch.no_grad():
        assert max_diff(model(x), expected) <= TOL
    perturb(model, seed=5)  # forget the weights, then load the safetensors copy into the same model
    report = load_pretrained(model, save(ref.state_dict(), tmp_path / f"{name}.safetensors"))
    assert report.ok and report.format == ("vit" if name.startswith("vit") else "timm_pvt_v2")
    with torch.no_grad():
        assert max_diff(model(x), expected) <= TOL


def test_vit_checkpoint_resampled_to_another_size(tmp_path):
    """224 weights into a 256 model: pos_embed resampled at load time as timm's checkpoint_filter_fn does."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    name = "vit_tiny_patch16_224"
    state = timm_model(name).state_dict()
    ref = timm.create_model(name, pretrained=False, img_size=256).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(state), ref))
    path = save(state, tmp_path / f"{name}.pth")
    model = vistra.create_model(name, img_size=256, pretrained=path).eval()
    assert model.pos_embed.shape == ref.pos_embed.shape == (1, 1 + 16 * 16, model.embed_dim)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= TOL


def test_vit_runtime_resample_matches_timm_dynamic_size(tmp_path):
    """A 224 model fed 256 x 192 images resizes its position embedding on the fly, as timm's dynamic_img_size."""
    name = "vit_tiny_patch16_224"
    state = timm_model(name).state_dict()
    ref = timm.create_model(name, pretrained=False, dynamic_img_size=True).eval()
    ref.load_state_dict(state)
    model = vistra.create_model(name, pretrained=save(state, tmp_path / "w.pth")).eval()
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= TOL


def test_pvt_v2_any_input_size(tmp_path):
    name = "pvt_v2_b0"
    ref = timm_model(name)
    model = vistra.create_model(name, pretrained=save(ref.state_dict(), tmp_path / "w.safetensors")).eval()
    x = torch.randn(2, 3, 320, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= TOL


def test_timm_pvt_v2_keys_become_official_names():
    from vistra.checkpoints import convert_state_dict, detect_format

    state = timm_model("pvt_v2_b0").state_dict()
    assert detect_format(state) == "timm_pvt_v2"
    converted = convert_state_dict(state)
    official = vistra.create_model("pvt_v2_b0").state_dict()
    assert set(converted) == set(official)
    assert torch.equal(converted["patch_embed2.proj.weight"], state["stages.1.downsample.proj.weight"])
    assert torch.equal(converted["block3.1.mlp.dwconv.dwconv.weight"], state["stages.2.blocks.1.mlp.dwconv.weight"])
    assert torch.equal(converted["norm4.bias"], state["stages.3.norm.bias"])
