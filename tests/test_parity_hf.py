"""Hugging Face transformers checkpoints (save_pretrained folders) load into vistra with the same logits.

Models are built from local configs with random weights; nothing is downloaded.
"""
import functools
import os

import pytest
import torch

import vistra

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, so zero-initialised biases and LayerNorm shifts are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def official_eps(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' Pvt / PvtV2 use layer_norm_eps (1e-6) for every LayerNorm; the official code (and vistra,
    timm) use 1e-5 in the patch embeddings and the spatial-reduction norm. Align the oracle so that the test
    measures the conversion (the eps gap alone is ~1e-5..1e-4 on random weights)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and (
            name.endswith(("patch_embedding.layer_norm", "attention.layer_norm", "attention.self.layer_norm"))
            or (".patch_embeddings." in name and name.endswith("layer_norm"))
        ):
            module.eps = 1e-5
    return model


def vit_tiny_config():
    return transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                                  image_size=224, patch_size=16, num_labels=1000, layer_norm_eps=1e-6, qkv_bias=True,
                                  hidden_act="gelu")


PVT_V2_CONFIGS = {
    "pvt_v2_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2]),
    "pvt_v2_b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2]),
    "pvt_v2_b2_li": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], linear_attention=True),
}


@functools.lru_cache(maxsize=None)
def hf_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit_tiny_patch16_224":
        return perturb(transformers.ViTForImageClassification(vit_tiny_config()))
    if name == "pvt_tiny":
        config = transformers.PvtConfig(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], num_labels=1000)
        return official_eps(perturb(transformers.PvtForImageClassification(config)))
    config = transformers.PvtV2Config(num_labels=1000, mlp_ratios=[8, 8, 4, 4], sr_ratios=[8, 4, 2, 1],
                                      num_attention_heads=[1, 2, 5, 8], hidden_act="gelu", **PVT_V2_CONFIGS[name])
    return official_eps(perturb(transformers.PvtV2ForImageClassification(config)))


@functools.lru_cache(maxsize=None)
def saved_folder(name: str, root: str) -> str:
    folder = os.path.join(root, name)
    hf_model(name).save_pretrained(folder)
    return folder


def logits(model, x):
    with torch.no_grad():
        out = model(pixel_values=x) if isinstance(model, transformers.PreTrainedModel) else model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2_li", "pvt_tiny"])
def test_same_logits_from_save_pretrained_folder(name, root):
    folder = saved_folder(name, root)
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    model = vistra.create_model(name, pretrained=folder).eval()
    size = 96 if name.startswith("pvt_v2") else 224  # PVTv2 takes any size; transformers' Pvt v1 only its own
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    expected = logits(hf_model(name), x)
    assert expected.abs().max() > 0.1
    assert (logits(model, x) - expected).abs().max().item() <= TOL


def test_pvt_v2_single_file_at_another_input_size(root):
    """model.safetensors on its own (no folder) at a non-square size. (transformers' Pvt v1 cannot run at other
    sizes: its interpolate_pos_encoding reshapes the stored grid to the new size, so v1 is checked at 224 only.)"""
    name = "pvt_v2_b0"
    model = vistra.create_model(name, pretrained=os.path.join(saved_folder(name, root), "model.safetensors")).eval()
    x = torch.randn(2, 3, 320, 256, generator=torch.Generator().manual_seed(2))
    assert (logits(model, x) - logits(hf_model(name), x)).abs().max().item() <= TOL


def test_transformers5_in_memory_vit_names(tmp_path):
    """torch.save(hf_model.state_dict()) in transformers 5 gives q_proj / o_proj / mlp.fc1 names: also accepted."""
    ref = hf_model("vit_tiny_patch16_224")
    path = tmp_path / "vit_state.pth"
    torch.save(ref.state_dict(), path)
    model = vistra.create_model("vit_tiny_patch16_224", pretrained=path).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    assert (logits(model, x) - logits(ref, x)).abs().max().item() <= TOL


def test_formats_detected(root):
    from vistra.checkpoints import detect_format, read_state_dict

    expected = {"vit_tiny_patch16_224": "hf_vit", "pvt_v2_b0": "hf_pvt_v2", "pvt_tiny": "hf_pvt"}
    for name, fmt in expected.items():
        assert detect_format(read_state_dict(saved_folder(name, root))) == fmt
