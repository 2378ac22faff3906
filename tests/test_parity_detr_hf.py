"""vistra DETR == Hugging Face DetrForObjectDetection (random weights moved across by the converter), eval mode.

The oracle runs with auxiliary_loss=False: with it True, transformers feeds each decoder layer the *normed*
output of the previous one (official DETR feeds the un-normed one and norms only the copies it returns), which
changes every prediction. The official intermediate outputs are read instead by hooks on the decoder layers:
aux_i = heads(decoder.layernorm(output of layer i)).
"""
import time

import pytest
import torch

pytest.importorskip("transformers")
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig  # noqa: E402

from vistra.checkpoints.convert_detr import convert_detr_hf, detect_detr_format  # noqa: E402
from vistra.detection.detr import DETRConfig, build_detr, pad_images  # noqa: E402

TOL = 1e-4
RESNET18 = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])


def _last_norm_of_branch(block: torch.nn.Module) -> torch.nn.Module | None:
    """The norm ending a residual branch: HF ResNet layers (layer[-1]) or timm / torchvision blocks (bn3 / bn2)."""
    if hasattr(block, "shortcut") and hasattr(block, "layer"):
        return block.layer[-1].normalization
    if hasattr(block, "bn3"):
        return block.bn3
    if hasattr(block, "bn2") and hasattr(block, "conv2") and not hasattr(block, "conv3"):
        return block.bn2
    return None


def _randomize(model: DetrForObjectDetection, seed: int = 1) -> None:
    """Give every tensor a distinctive value (HF initialises biases to 0 and norms to identity, which would hide
    a wrong mapping). Residual branches end with a small norm scale so activations stay O(1), as in trained nets."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1, generator=g)
            elif t.ndim == 1 and name.endswith("weight"):  # batch / layer norm scales
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.ndim == 1:  # biases
                t.normal_(0, 0.05, generator=g)
            elif t.ndim == 2 and "embeddings" not in name:  # linear layers
                t.normal_(0, t.shape[1] ** -0.5, generator=g)
        for block in model.model.backbone.modules():
            norm = _last_norm_of_branch(block)
            if norm is not None:
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 0.2 + 0.1)


def _hf_detr(resnet: dict | None, timm_backbone: str | None = None, **kw) -> DetrForObjectDetection:
    """Random-weight HF DETR, offline: HF's own ResNet from a ResNetConfig, or a timm ResNet built locally."""
    if timm_backbone is not None:
        config = DetrConfig(use_timm_backbone=True, backbone=timm_backbone, use_pretrained_backbone=False,
                            num_labels=91, **kw)
    else:
        config = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"], **resnet), num_labels=91, **kw)
    model = DetrForObjectDetection(config).eval()
    _randomize(model)
    return model


def _small(d: int = 64, heads: int = 4, enc: int = 2, dec: int = 3, ffn: int = 128, queries: int = 10) -> tuple:
    hf = dict(d_model=d, encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_layers=enc,
              decoder_layers=dec, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, num_queries=queries)
    ours = dict(hidden_dim=d, nheads=heads, enc_layers=enc, dec_layers=dec, dim_feedforward=ffn, num_queries=queries)
    return hf, ours


def _images() -> list[torch.Tensor]:
    return [torch.randn(3, 96, 128), torch.randn(3, 128, 80)]  # padded together to 128 x 128


def _compare(hf: DetrForObjectDetection, ours: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, float]:
    """Max |diff| of logits, boxes and every aux output on the padded batch of images."""
    batch, mask = pad_images(images)
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in hf.model.decoder.layers]
    try:
        with torch.no_grad():
            ref = hf(pixel_values=batch, pixel_mask=(~mask).long())  # HF: 1 = valid pixel
            out = ours(images)
            ref_aux = []
            for h in captured[:-1]:
                h = hf.model.decoder.layernorm(h)
                ref_aux.append((hf.class_labels_classifier(h), hf.bbox_predictor(h).sigmoid()))
    finally:
        for hook in hooks:
            hook.remove()
    assert ref.logits.std() > 0.3 and (ref.logits[0] - ref.logits[1]).abs().max() > 0.05  # a meaningful test
    diffs = {"logits": (ref.logits - out["pred_logits"]).abs().max().item(),
             "boxes": (ref.pred_boxes - out["pred_boxes"]).abs().max().item()}
    assert len(out["aux_outputs"]) == len(ref_aux)
    for i, ((lg, bx), aux) in enumerate(zip(ref_aux, out["aux_outputs"])):
        diffs[f"aux{i}_logits"] = (lg - aux["pred_logits"]).abs().max().item()
        diffs[f"aux{i}_boxes"] = (bx - aux["pred_boxes"]).abs().max().item()
    print({k: f"{v:.2e}" for k, v in diffs.items()})
    return diffs


def _port(hf: DetrForObjectDetection, **config) -> torch.nn.Module:
    sd = hf.state_dict()
    assert detect_detr_format(sd) == "detr_hf"
    ours = build_detr(DETRConfig(**config)).eval()
    ours.load_state_dict(convert_detr_hf(sd), strict=True)
    return ours


def test_parity_resnet18_small_transformer():
    hf_kw, our_kw = _small()
    hf = _hf_detr(RESNET18, **hf_kw)
    diffs = _compare(hf, _port(hf, backbone="resnet18", **our_kw), _images())
    assert max(diffs.values()) <= TOL


def test_parity_learned_position_embedding():
    hf_kw, our_kw = _small(enc=1, dec=2)
    hf = _hf_detr(RESNET18, position_embedding_type="learned", **hf_kw)
    diffs = _compare(hf, _port(hf, backbone="resnet18", position_embedding="learned", **our_kw), _images())
    assert max(diffs.values()) <= TOL


def test_parity_resnet50_full_size_transformer():
    """The real DETR-R50 shape: HF's default ResNet-50, d 256, 8 heads, 6 + 6 layers, FFN 2048, 100 queries."""
    start = time.perf_counter()
    hf = _hf_detr({})
    diffs = _compare(hf, _port(hf, backbone="resnet50"), _images())
    assert max(diffs.values()) <= TOL
    assert len(diffs) == 2 + 2 * 5
    print(f"full-size parity took {time.perf_counter() - start:.1f} s")


def test_parity_dc5_timm_backbone():
    """DC5 through transformers' timm backbone (output_stride 16): torchvision key names on the HF side."""
    pytest.importorskip("timm")
    hf_kw, our_kw = _small(enc=1, dec=2)
    hf = _hf_detr(None, timm_backbone="resnet50", dilation=True, **hf_kw)
    ours = _port(hf, backbone="resnet50", dilation=True, **our_kw)
    assert ours.backbone.strides == [16]
    diffs = _compare(hf, ours, _images())
    assert max(diffs.values()) <= TOL


def _to_v4_names(sd: dict) -> dict:
    """transformers 5 in-memory names -> the names in Hub files written by transformers 4 (facebook/detr-*)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.")
        k = k.replace("model.position_embedding.", "model.backbone.position_embedding.")
        out[k] = v
    return out


@pytest.mark.parametrize("position", ["sine", "learned"])
def test_hub_file_names_convert_like_in_memory_names(position):
    hf_kw, _ = _small(enc=1, dec=1)
    hf = _hf_detr(RESNET18, position_embedding_type=position, **hf_kw)
    sd = hf.state_dict()
    v4 = _to_v4_names(sd)
    assert "model.encoder.layers.0.fc1.weight" in v4 and "model.backbone.conv_encoder.model.embedder.embedder." \
        "convolution.weight" in v4
    assert detect_detr_format(v4) == "detr_hf"
    a, b = convert_detr_hf(sd), convert_detr_hf(v4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hf_resnet_stride_is_in_the_3x3_conv():
    """HF's bottleneck (downsample_in_bottleneck=False, the default) strides in the 3x3 conv like torchvision's
    ResNet v1.5; its BatchNorms become frozen (buffers only), so eval BN == our FrozenBatchNorm2d."""
    hf = _hf_detr({})
    stage = hf.model.backbone.model.encoder.stages[1].layers[0]
    assert stage.layer[0].convolution.stride == (1, 1) and stage.layer[1].convolution.stride == (2, 2)
    norm = stage.layer[0].normalization
    assert not list(norm.parameters()) and {n for n, _ in norm.named_buffers()} == {
        "weight", "bias", "running_mean", "running_var"}
