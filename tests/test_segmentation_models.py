"""Segmentation models: heads, the Segmenter, the registered presets and their backbone weights."""
import pytest
import torch

import vistra
import vistra.classification.presets  # noqa: F401  (registers vit_digits, a small ViT for cheap head tests)
from vistra.segmentation import LinearHead, ProgressiveUpsamplingHead, SemanticFPNHead, build_segmenter
from vistra.segmentation.heads import norm_layer

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, oversubscribed threads make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL_PRESETS = ["seg_vit_tiny_patch16_linear", "semfpn_pvt_v2_b0", "semfpn_pvt_v2_digits"]
LARGE_PRESETS = ["seg_vit_small_patch16_linear", "seg_vit_small_patch16_pup", "semfpn_pvt_tiny", "semfpn_pvt_v2_b2"]


def _no_grad_params(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_presets_forward_backward(name):
    model = vistra.create_model(name, num_classes=5, img_size=32, drop_path_rate=0.1).train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5, 32, 32)
    logits.logsumexp(1).mean().backward()
    assert not _no_grad_params(model)
    assert model.config.num_classes == 5 and model.num_classes == 5


@pytest.mark.parametrize("name", LARGE_PRESETS)
def test_large_presets_build_and_run(name):
    model = vistra.create_model(name, num_classes=4, img_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 4, 32, 48)


def test_presets_are_registered_by_create_model():
    names = set(vistra.list_models("seg_*")) | set(vistra.list_models("semfpn_*"))
    assert set(SMALL_PRESETS + LARGE_PRESETS) <= names


def test_preset_architectures():
    vit = vistra.create_model("seg_vit_small_patch16_pup", num_classes=150, img_size=64)
    assert isinstance(vit.head, ProgressiveUpsamplingHead) and len(vit.head.stages) == 4  # 16 = 2^4
    assert vit.backbone.channels == [384] and vit.backbone.strides == [16]
    fpn = vistra.create_model("semfpn_pvt_v2_b0", img_size=64)
    assert isinstance(fpn.head, SemanticFPNHead) and fpn.num_classes == 150  # ADE20K by default
    assert fpn.backbone.channels == [32, 64, 160, 256] and fpn.backbone.strides == [4, 8, 16, 32]
    assert [len(s) for s in fpn.head.scale_heads] == [1, 1, 2, 3]  # stride 4, 8, 16, 32 -> 4: 1, 1, 2, 3 stages
    linear = vistra.create_model("seg_vit_small_patch16_linear", num_classes=21, img_size=64)
    assert isinstance(linear.head, LinearHead) and linear.head.classifier.in_channels == 384


def test_linear_head_is_a_1x1_conv_then_bilinear_upsampling():
    model = build_segmenter("vit_digits", "linear", 3, 32, (-1,), backbone_kwargs={"depth": 1, "embed_dim": 48,
                                                                                   "num_heads": 2}).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.backbone(x)[-1]  # (1, 48, 8, 8)
        conv = model.head.classifier
        expected = torch.nn.functional.interpolate(conv(tokens), size=(32, 32), mode="bilinear",
                                                   align_corners=False)
        torch.testing.assert_close(model(x), expected)


def test_pup_head_on_a_small_vit_trains_every_parameter():
    model = build_segmenter("vit_digits", "pup", 3, 32, (-1,), backbone_kwargs={"depth": 1, "embed_dim": 48,
                                                                                "num_heads": 2}, channels=16)
    assert len(model.head.stages) == 2  # patch 4 -> two 2x upsamplings
    assert model.head(model.backbone(torch.randn(2, 3, 32, 32))).shape == (2, 3, 32, 32)  # full resolution
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert not _no_grad_params(model)


def test_fpn_head_output_stride_and_odd_input_sizes():
    head = SemanticFPNHead([8, 16, 24, 32], [4, 8, 16, 32], num_classes=3, fpn_channels=16, channels=8)
    maps = [torch.randn(1, c, 32 // (2 ** i), 40 // (2 ** i)) for i, c in enumerate([8, 16, 24, 32])]
    assert head(maps).shape == (1, 3, 32, 40)  # the finest level's size
    model = vistra.create_model("semfpn_pvt_v2_digits", num_classes=3, img_size=64).eval()
    for size in [(100, 77), (33, 48)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_group_norm_keeps_at_least_four_channels_per_group():
    # mmseg's 32 groups for its 128 / 256 channels; fewer for thin heads, so a 1x1 map (a 32 px image at stride
    # 32) is not normalised to zero channel by channel.
    assert [norm_layer("gn", c).num_groups for c in (256, 128, 64, 32, 8, 3)] == [32, 32, 16, 8, 2, 1]
    assert isinstance(norm_layer("bn", 8), torch.nn.BatchNorm2d)
    head = SemanticFPNHead([8, 16], [16, 32], num_classes=2, fpn_channels=16, channels=16).train()
    out = head([torch.randn(2, 8, 2, 2), torch.randn(2, 16, 1, 1)])
    assert out.shape == (2, 2, 2, 2) and out.std() > 0


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown segmentation head 'nope'"):
        build_segmenter("pvt_v2_b0", "nope")
    with pytest.raises(TypeError, match="bad option for the 'fpn' head"):
        vistra.create_model("semfpn_pvt_v2_b0", img_size=64, not_an_option=1)
    with pytest.raises(ValueError, match="not a power-of-two multiple"):
        SemanticFPNHead([8, 8], [4, 12], num_classes=2)
    with pytest.raises(ValueError, match="unknown norm"):
        ProgressiveUpsamplingHead([8], [4], 2, norm="ln")


def test_backbone_weights_from_a_vistra_checkpoint_load_into_the_backbone_only(tmp_path):
    classifier = vistra.create_model("pvt_v2_b0", num_classes=1000)
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(classifier.state_dict(), path)
    model = vistra.create_model("semfpn_pvt_v2_b0", num_classes=7, img_size=224, backbone_weights=str(path))
    inner = model.backbone.model.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(inner[key], value)
    assert model.head.classifier.out_channels == 7


def test_backbone_weights_from_a_timm_checkpoint_give_timms_pyramid(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    path = tmp_path / "timm_pvt_v2_b0.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = vistra.create_model("semfpn_pvt_v2_b0", num_classes=3, img_size=64, backbone_weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        theirs = reference.forward_intermediates(x, intermediates_only=True)  # 4 maps, strides 4..32
        for ours, expected in zip(model.backbone(x), theirs, strict=True):
            torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
