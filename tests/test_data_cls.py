"""Classification data: digits maker, image reading, ImageFolder, transforms, Mixup/CutMix, losses."""
import ast
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vistra.data import (
    DataError,
    ImageFolderDataset,
    MixupCutmix,
    build_eval_transform,
    build_train_transform,
    classification_loss,
    make_digits_cls,
    read_image,
    smooth_one_hot,
    soft_target_cross_entropy,
)
from vistra.data import digits as digits_module

# ----------------------------------------------------------------------------- helpers


def _noise(h, w, channels=3, seed=0):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _random_bytes(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).bytes(500))
    return path


def _truncated(path, fmt):
    buffer = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "truncated.png": lambda p: _truncated(p, "PNG"),
    "truncated.jpg": lambda p: _truncated(p, "JPEG"),
    "random.png": _random_bytes,
}


def _one_line_error_naming(error_info, path):
    message = str(error_info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, make_digits_cls(out)


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


# ----------------------------------------------------------------------------- digits maker


def test_digits_counts_classes_and_stratified_split(digits_root):
    out, summary = digits_root
    assert summary["total"] == 1797 and summary["num_train"] + summary["num_val"] == 1797
    assert summary["classes"] == [str(d) for d in range(10)]
    assert (out / "classes.txt").read_text().split() == summary["classes"]
    assert (out / "README.txt").is_file()
    train, val = ImageFolderDataset(out / "train"), ImageFolderDataset(out / "val")
    assert train.classes == val.classes == summary["classes"]
    assert len(train) == summary["num_train"] and len(val) == summary["num_val"]
    for name in summary["classes"]:
        n_train, n_val = summary["train_per_class"][name], summary["val_per_class"][name]
        assert len(list((out / "val" / name).glob("*.png"))) == n_val
        assert n_val == round((n_train + n_val) * 0.2)  # stratified: every class split 80/20
    train_names = {Path(p).name for p, _ in train.samples}
    assert train_names.isdisjoint(Path(p).name for p, _ in val.samples)
    image = read_image(train.samples[0][0])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_digits_deterministic_and_idempotent(digits_root):
    out, summary = digits_root
    before = _listing(out)
    (out / "train" / "0" / "stray.png").write_bytes(b"not from the maker")
    assert make_digits_cls(out) == summary
    assert _listing(out) == before  # same files, stray one gone, no staging left
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "classes.txt", "train", "val"]
    labels = np.repeat(np.arange(10), 20)
    mask = digits_module._stratified_val_mask
    assert (mask(labels, 0.2, 0) == mask(labels, 0.2, 0)).all()
    assert (mask(labels, 0.2, 0) != mask(labels, 0.2, 1)).any()


def test_digits_refuses_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not made by make_digits_cls"):
        make_digits_cls(tmp_path)
    assert (tmp_path / "thesis.tex").exists()


def test_digits_imports_sklearn_lazily():
    tree = ast.parse(Path(digits_module.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("sklearn") for name in names)


# ----------------------------------------------------------------------------- ImageFolder


def _tree(root, layout):
    """layout: {"cat/a.png": mode, ...} -> files of 8x6 pixels."""
    for rel, mode in layout.items():
        _save(root / rel, Image.new(mode, (8, 6)))
    return root


def test_image_folder_classes_and_samples(tmp_path):
    _tree(tmp_path, {"dog/b.png": "RGB", "dog/a.jpg": "RGB", "cat/x/c.png": "L", "cat/.hidden.png": "RGB"})
    (tmp_path / "cat" / "notes.txt").write_text("ignored by extension")
    (tmp_path / ".git").mkdir()
    ds = ImageFolderDataset(tmp_path, transform=build_eval_transform(16))
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert [(Path(p).relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        ("cat/x/c.png", 0), ("dog/a.jpg", 1), ("dog/b.png", 1)]
    assert ds.targets == [0, 1, 1] and len(ds) == 3
    image, label = ds[2]
    assert image.shape == (3, 16, 16) and label == 1


def test_image_folder_empty_class(tmp_path):
    _tree(tmp_path, {"a/1.png": "RGB", "c/1.png": "RGB"})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        ImageFolderDataset(tmp_path)
    assert "no images" in _one_line_error_naming(info, tmp_path / "b")
    ds = ImageFolderDataset(tmp_path, skip_bad=True)
    assert ds.classes == ["a", "c"] and ds.empty_classes == ["b"] and ds.targets == [0, 1]


def test_image_folder_missing_root_and_no_classes(tmp_path):
    with pytest.raises(DataError) as info:
        ImageFolderDataset(tmp_path / "nope")
    assert "does not exist" in _one_line_error_naming(info, tmp_path / "nope")
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        ImageFolderDataset(tmp_path)
    assert "no class folders" in _one_line_error_naming(info, tmp_path)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_raises_one_line_error(tmp_path, name):
    path = BAD_FILES[name](tmp_path / "cls" / name)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert "cannot read image" in _one_line_error_naming(info, path)
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(DataError) as info:
        ds[0]
    _one_line_error_naming(info, path)


def test_bad_files_skipped_and_counted(tmp_path):
    _tree(tmp_path, {"a/0_good.png": "RGB", "b/9_good.png": "L"})
    bad = [BAD_FILES[name](tmp_path / "a" / f"5_{name}") for name in sorted(BAD_FILES)]
    (tmp_path / "a" / "6_notes.txt").write_text("ignored by extension")
    ds = ImageFolderDataset(tmp_path, transform=build_eval_transform(8), skip_bad=True)
    assert len(ds) == 5 and ds.bad_files == [] and ds.skipped == 0
    image, label = ds[1]  # three bad files in a row -> the next good sample, in class b
    assert image.shape == (3, 8, 8) and label == 1
    assert ds.bad_files == sorted(map(str, bad)) and ds.skipped == 3
    assert ds[2][1] == 1 and ds.skipped == 5  # two more bad files passed over
    summary = ds.validate(progress=False)
    assert summary["num_samples"] == 5 and summary["num_good"] == 2 and summary["num_bad"] == 3
    assert summary["per_class"] == {"a": 1, "b": 1}
    assert all(str(p) in line for p, line in zip(sorted(bad), summary["bad_files"]))
    strict = ImageFolderDataset(tmp_path)
    assert strict.validate(progress=False)["num_bad"] == 3  # validate reports, never raises
    with pytest.raises(IndexError):
        ds[5]


def test_all_bad_raises(tmp_path):
    BAD_FILES["random.png"](tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match="no readable image"):
        ImageFolderDataset(tmp_path, skip_bad=True)[0]


# ----------------------------------------------------------------------------- read_image


def _mode_image(mode, h=5, w=7, seed=0):
    """An image of ``mode`` and a format that can store it."""
    rgb = _noise(h, w, seed=seed)
    if mode == "I;16":
        return Image.fromarray(_noise(h, w, 1, seed).astype(np.uint16) * 257), "PNG"
    if mode == "I":
        return Image.fromarray(_noise(h, w, 1, seed).astype(np.int32) * 257), "TIFF"
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK"), "TIFF"
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, _noise(h, w, 1, seed + 1)])), "PNG"
    return Image.fromarray(rgb).convert(mode), "PNG"


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "I;16", "I", "CMYK", "RGB"])
def test_modes_come_out_rgb_uint8(tmp_path, mode):
    image, fmt = _mode_image(mode)
    path = _save(tmp_path / f"x.{fmt.lower()}", image, format=fmt)
    out = read_image(path)
    assert out.mode == "RGB" and out.size == (7, 5) and np.asarray(out).dtype == np.uint8


def test_16_bit_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "16.png", Image.fromarray(values))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    pixels = np.asarray(read_image(path))  # (1, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels == pixels[..., :1]).all()  # gray stays gray


def test_alpha_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], dtype=np.uint8)
    out = np.asarray(read_image(_save(tmp_path / "a.png", Image.fromarray(rgba)))).astype(int)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [200, 100, 50]
    assert np.abs(out[0, 2] - np.array([100, 50, 25])).max() <= 1
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # colour 0 (white) is transparent
    out = np.asarray(read_image(_save(tmp_path / "p.png", palette, transparency=0)))
    assert out[0].tolist() == [[0, 0, 0], [10, 20, 30]]


def test_exif_orientation_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # (H=20, W=40), red block at the top-left
    pixels[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "r.png", Image.fromarray(pixels), exif=exif.tobytes())
    out = np.asarray(read_image(path))
    assert out.shape == (40, 20, 3)
    assert out[:4, -4:, 0].min() == 255 and out[:4, :4, 0].max() == 0  # top-left went top-right


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    small = _save(tmp_path / "s.png", Image.new("L", (40, 40)))  # over the limit: Pillow would warn
    large = _save(tmp_path / "l.png", Image.new("L", (100, 100)))  # over twice the limit: Pillow raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (small, large):
            with pytest.raises(DataError, match="decompression bomb") as info:
                read_image(path)
            _one_line_error_naming(info, path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert read_image(large).size == (100, 100)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        read_image(tmp_path / "gone.png")
    _one_line_error_naming(info, tmp_path / "gone.png")


@settings(max_examples=30, deadline=None, database=None)
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    mode=st.sampled_from(["L", "1", "P", "RGB", "RGBA", "LA", "I;16", "I", "CMYK"]),
    seed=st.integers(0, 1000),
)
def test_property_any_image_through_transforms(h, w, mode, seed):
    image, fmt = _mode_image(mode, h, w, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = _save(Path(folder) / f"x.{fmt.lower()}", image, format=fmt)
        out = read_image(path)
    assert out.mode == "RGB" and out.size == (w, h)
    for transform in (build_train_transform(16, color_jitter=0.4), build_eval_transform(16)):
        tensor = transform(out)
        assert type(tensor) is torch.Tensor and tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


# ----------------------------------------------------------------------------- transforms


def test_transforms_shapes_and_determinism():
    image = Image.fromarray(_noise(50, 70))
    train = build_train_transform(24, hflip=0.0, random_erasing=1.0)
    torch.manual_seed(3)
    first = train(image)
    torch.manual_seed(3)
    assert first.shape == (3, 24, 24) and torch.equal(first, train(image))  # global RNG only
    evaluate = build_eval_transform(24, crop_pct=0.75)  # resize shorter side to 32, crop 24
    assert torch.equal(evaluate(image), evaluate(image)) and evaluate(image).shape == (3, 24, 24)
    gray = build_eval_transform(8, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)(Image.new("RGB", (8, 8), (255,) * 3))
    assert torch.allclose(gray, torch.ones(3, 8, 8))


# ----------------------------------------------------------------------------- Mixup / CutMix and losses


def _batch(b=6, k=5):
    images = torch.zeros(b, 3, 8, 8)
    images[0] = 1.0  # only sample 0 is bright, so its mixed mean is its own share
    return images, torch.tensor([0, 1, 2, 3, 4, 1][:b])


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_and_mass(mixup_alpha, cutmix_alpha):
    images, labels = _batch()
    original = images.clone()
    mix = MixupCutmix(5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.0)
    for _ in range(10):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, 5)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        assert torch.allclose(mixed.sum(0), images.sum(0))  # partners swap pixels: mass is kept
        assert torch.allclose(targets.sum(0), F.one_hot(labels, 5).float().sum(0))
        assert torch.allclose(mixed[0].mean(), targets[0, 0], atol=1e-6)  # label share == pixel share
    assert torch.equal(images, original)


def test_mixup_label_smoothing_and_rng():
    images, labels = _batch()
    mixed, targets = MixupCutmix(5, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)(images, labels)
    assert torch.equal(mixed, images)
    assert torch.allclose(targets, smooth_one_hot(labels, 5, 0.1))
    assert torch.allclose(targets[0], torch.tensor([0.92, 0.02, 0.02, 0.02, 0.02]))
    mix = MixupCutmix(5)
    torch.manual_seed(7)
    first = mix(torch.randn(6, 3, 8, 8), labels)
    torch.manual_seed(7)
    second = mix(torch.randn(6, 3, 8, 8), labels)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # resumable from the global RNG state


def test_soft_target_cross_entropy_matches_cross_entropy():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    one_hot = F.one_hot(labels, 10).float()
    assert torch.allclose(soft_target_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels), atol=1e-6)
    smoothed = classification_loss(logits, labels, label_smoothing=0.1)
    assert torch.allclose(smoothed, soft_target_cross_entropy(logits, smooth_one_hot(labels, 10, 0.1)), atol=1e-6)
    assert torch.allclose(classification_loss(logits, one_hot, label_smoothing=0.1), F.cross_entropy(logits, labels))
