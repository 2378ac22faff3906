"""Checkpoint reading, saving, conversion and load errors (vistra.checkpoints, vistra convert)."""
import argparse
import functools
import os

import pytest
import torch
from safetensors.torch import save_file

import vistra
from vistra.checkpoints import (
    CheckpointError,
    detect_format,
    load_pretrained,
    read_checkpoint,
    read_state_dict,
    save_checkpoint,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained(name: str, **kw) -> torch.nn.Module:
    """A vistra model with non-trivial weights (cached: building is the slow part)."""
    torch.manual_seed(0)
    return perturb(vistra.create_model(name, **kw))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- reading and writing files

def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    src = trained("pvt_v2_b0")
    path = save_checkpoint(src, tmp_path / "w.safetensors", model_name="pvt_v2_b0")
    state, meta = read_checkpoint(path)
    assert meta["format"] == "vistra" and meta["model"] == "pvt_v2_b0" and meta["arch"] == "pvt_v2"
    assert detect_format(state) == "pvt_v2"
    model = vistra.create_model("pvt_v2_b0", pretrained=path)
    assert same_weights(model, src)
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]  # no temp file left behind


def test_save_overwrites_atomically_and_handles_shared_tensors(tmp_path):
    base = torch.arange(12.0)
    state = {"a": base, "tied": base, "view": base[2:8].view(2, 3), "t": base.view(3, 4).t()}
    path = tmp_path / "shared.safetensors"
    path.write_bytes(b"old contents")
    save_checkpoint(state, path)
    back = read_state_dict(path)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert sorted(os.listdir(tmp_path)) == ["shared.safetensors"]


def test_save_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint({"a": torch.ones(2)}, path)
    with pytest.raises(TypeError, match="'b'"):
        save_checkpoint({"a": torch.zeros(2), "b": 3}, path)
    assert torch.equal(read_state_dict(path)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_torch_file_loads_with_weights_only(tmp_path):
    src = trained("pvt_v2_b0")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    assert same_weights(vistra.create_model("pvt_v2_b0", pretrained=tmp_path / "w.pth"), src)


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unrestricted unpickling runs it
    assert marker.exists()


def test_training_checkpoint_with_module_prefix(tmp_path):
    src = trained("pvt_v2_b0")
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    torch.save(wrapped, tmp_path / "train.pth")
    assert same_weights(vistra.create_model("pvt_v2_b0", pretrained=tmp_path / "train.pth"), src)


def test_detr_style_file_with_argparse_namespace(tmp_path):
    """Official DETR / Deformable-DETR main.py files pickle args (a Namespace) next to the weights."""
    src = trained("pvt_v2_b0")
    args = argparse.Namespace(lr=1e-4, backbone="resnet50", lr_drop=200, output_dir="out", dilation=False)
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
                "epoch": 499, "args": args}, tmp_path / "checkpoint.pth")
    with pytest.raises(Exception):
        torch.load(tmp_path / "checkpoint.pth", weights_only=True)  # plain weights_only refuses the Namespace
    assert same_weights(vistra.create_model("pvt_v2_b0", pretrained=tmp_path / "checkpoint.pth"), src)


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, kind, keep):
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    state = {"a": torch.randn(64, 64), "b": torch.randn(64)}
    if kind == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_file_and_non_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        vistra.create_model("pvt_v2_b0", pretrained=tmp_path / "absent.pth")
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_state_dict(tmp_path / "notes.pth")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.safetensors")
    torch.save({"epoch": 3, "note": "no tensors here"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "meta.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="without a model file"):
        read_state_dict(tmp_path / "folder")


# ---------------------------------------------------------------- fitting a model

def test_wrong_model_lists_missing_and_unexpected_keys(tmp_path):
    path = save_checkpoint(trained("pvt_v2_b0"), tmp_path / "b0.safetensors", model_name="pvt_v2_b0")
    with pytest.raises(CheckpointError) as err:
        vistra.create_model("vit_tiny_patch16_224", pretrained=path)
    msg = str(err.value)
    assert str(path) in msg and "saved from vistra model 'pvt_v2_b0'" in msg
    assert "missing keys" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "176 unexpected keys" in msg and "block1.0.attn.kv.weight" in msg
    assert "more)" in msg  # long lists are cut, with a count
    assert "holds a pvt_v2 checkpoint but the model is a vit" in msg


def test_shape_mismatch_names_both_shapes(tmp_path):
    path = save_checkpoint(trained("pvt_v2_b0"), tmp_path / "b0.safetensors")
    with pytest.raises(CheckpointError) as err:
        vistra.create_model("pvt_v2_b1", pretrained=path)
    assert "block1.0.attn.sr.weight: (32, 32, 8, 8) in the file vs (64, 64, 8, 8) in the model" in str(err.value)


def test_classifier_with_other_num_classes(tmp_path):
    src = trained("pvt_v2_b0", num_classes=10)
    path = save_checkpoint(src, tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointError, match=r"head.weight: \(10, 256\) in the file vs \(1000, 256\)") as err:
        vistra.create_model("pvt_v2_b0", pretrained=path)
    assert "num_classes=10" in str(err.value)
    assert same_weights(vistra.create_model("pvt_v2_b0", num_classes=10, pretrained=path), src)
    model = vistra.create_model("pvt_v2_b0")
    report = load_pretrained(model, path, skip_mismatched_head=True)  # fine-tuning: keep the new head
    assert report.skipped_head == ["head.bias", "head.weight"] and report.ok
    assert torch.equal(model.patch_embed1.proj.weight, src.patch_embed1.proj.weight)
    features = vistra.create_model("pvt_v2_b0", features_only=True, pretrained=path)
    assert len(features(X)) == 4


def test_non_strict_load_reports_instead_of_raising(tmp_path):
    state = dict(trained("pvt_v2_b0").state_dict())
    state.pop("norm4.weight")
    state["extra.weight"] = torch.ones(1)
    model = vistra.create_model("pvt_v2_b0")
    report = load_pretrained(model, state, strict=False)
    assert report.missing == ["norm4.weight"] and report.unexpected == ["extra.weight"]
    assert torch.equal(model.norm4.bias, state["norm4.bias"])


def test_vit_position_embedding_resampled_at_load(tmp_path):
    path = save_checkpoint(trained("vit_tiny_patch16_224"), tmp_path / "vit.safetensors")
    model = vistra.create_model("vit_tiny_patch16_224", img_size=256)
    report = load_pretrained(model, path)
    assert report.resized == [("pos_embed", (1, 197, 192), (1, 257, 192))]
    assert model.pos_embed.shape == (1, 257, 192)


def test_pvt_v1_position_embeddings_resampled_like_at_run_time(tmp_path):
    """Loading 224 weights into a 160 model == running the 224 model on 160 images (both bilinear)."""
    src = trained("pvt_tiny")
    path = save_checkpoint(src, tmp_path / "pvt.safetensors")
    model = vistra.create_model("pvt_tiny", img_size=160, pretrained=path).eval()
    assert model.pos_embed1.shape == (1, 40 * 40, 64) and model.pos_embed4.shape == (1, 1 + 5 * 5, 512)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - src(x)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- Hugging Face folders and conversion

@functools.lru_cache(maxsize=None)
def hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768, num_labels=1000, layer_norm_eps=1e-6)
    return perturb(transformers.ViTForImageClassification(config))


def test_hf_folder_single_sharded_and_bin(tmp_path):
    ref = hf_vit()
    ref.save_pretrained(tmp_path / "single")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="2MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    torch.save(read_state_dict(tmp_path / "single"), tmp_path / "bin" / "pytorch_model.bin")
    first = read_state_dict(tmp_path / "single")
    assert detect_format(first) == "hf_vit"
    for folder in ("sharded", "bin"):
        other = read_state_dict(tmp_path / folder)
        assert other.keys() == first.keys() and all(torch.equal(other[k], first[k]) for k in first)
    model = vistra.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "sharded")
    key_weight = first["vit.encoder.layer.3.attention.attention.key.weight"]
    assert torch.equal(model.blocks[3].attn.qkv.weight[192:384], key_weight)
    _, meta = read_checkpoint(tmp_path / "single")
    assert meta["hf_architectures"] == "ViTForImageClassification"


def test_hf_vit_without_a_value_projection_is_reported():
    state = dict(read_state_dict_from(hf_vit()))
    state.pop("vit.encoder.layer.0.attention.attention.value.weight")
    with pytest.raises(CheckpointError, match=r"cannot build blocks.0.attn.qkv.weight from 3 parts"):
        load_pretrained(vistra.create_model("vit_tiny_patch16_224"), state)


def read_state_dict_from(hf_model) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hf_model.save_pretrained(d)
        return read_state_dict(d)


def test_convert_cli_writes_vistra_safetensors(tmp_path, capsys):
    from vistra.cli_convert import run_convert

    ref = hf_vit()
    ref.save_pretrained(tmp_path / "hf")
    report = run_convert(tmp_path / "hf", tmp_path / "vit.safetensors", "vit_tiny_patch16_224")
    line = capsys.readouterr().out.strip()
    assert "hf_vit" in line and "vit.safetensors" in line and "vit_tiny_patch16_224" in line and "\n" not in line
    assert report.ok and report.dropped == []
    state, meta = read_checkpoint(tmp_path / "vit.safetensors")
    assert meta["format"] == "vistra" and meta["model"] == "vit_tiny_patch16_224" and meta["num_classes"] == "1000"
    assert detect_format(state) == "vit"
    model = vistra.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "vit.safetensors").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(x) - ref(pixel_values=x).logits).abs().max().item() <= 1e-4


def test_convert_cli_follows_the_checkpoint_classifier(tmp_path, capsys):
    from vistra.cli_convert import run_convert

    torch.save(trained("pvt_v2_b0", num_classes=10).state_dict(), tmp_path / "ten.pth")
    run_convert(tmp_path / "ten.pth", tmp_path / "ten.safetensors", "pvt_v2_b0")
    assert read_checkpoint(tmp_path / "ten.safetensors")[1]["num_classes"] == "10"
    capsys.readouterr()
