"""Segmentation data: dataset layouts, mask reading and its errors, joint transforms, the digits-seg maker."""
import numpy as np
import pytest
import torch
from PIL import Image

from vistra.data.digits_seg import make_digits_seg
from vistra.data.errors import DataError
from vistra.data.seg_dataset import SegmentationDataset, read_mask, voc_palette, write_mask
from vistra.data.seg_transforms import (
    Normalize,
    Pad,
    PhotometricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    build_seg_eval_transform,
    build_seg_train_transform,
    rescale_size,
)


# ---------------------------------------------------------------------------------------------- datasets
def _save_pair(image_path, mask_path, mask, mode="P"):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([mask * 20] * 3, -1).astype(np.uint8)).save(image_path)
    if mode == "P":
        write_mask(mask_path, mask)
    else:
        Image.fromarray(mask.astype(np.uint8)).convert(mode).save(mask_path)


def _mask(seed=0, h=12, w=16, k=4):
    return np.random.default_rng(seed).integers(0, k, size=(h, w)).astype(np.uint8)


def test_ade20k_layout(tmp_path):
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            _save_pair(tmp_path / "images" / split / f"a{i}.jpg", tmp_path / "annotations" / split / f"a{i}.png",
                       _mask(i))
    train = SegmentationDataset(tmp_path, "train")
    val = SegmentationDataset(tmp_path, "val", layout="ade20k")
    assert (train.layout, len(train), len(val)) == ("ade20k", 3, 2)
    image, mask = val[1]
    assert image.size == (16, 12) and np.array_equal(mask, _mask(1))


def test_voc_layout(tmp_path):
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("b0\nb1\n")
    for i in range(3):
        m = _mask(i)
        m[0, 0] = 255  # VOC's object borders
        _save_pair(tmp_path / "JPEGImages" / f"b{i}.jpg", tmp_path / "SegmentationClass" / f"b{i}.png", m)
    dataset = SegmentationDataset(tmp_path, "val", num_classes=4)
    assert dataset.layout == "voc" and len(dataset) == 2
    assert dataset[1][1][0, 0] == 255


def test_folder_layout_with_grayscale_masks_and_classes_file(tmp_path):
    for i in range(2):
        _save_pair(tmp_path / "train" / "images" / f"c{i}.png", tmp_path / "train" / "masks" / f"c{i}.png",
                   _mask(i), mode="L")
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    dataset = SegmentationDataset(tmp_path, "train")
    assert dataset.layout == "folder" and dataset.num_classes == 4 and dataset.classes == ["a", "b", "c", "d"]
    assert np.array_equal(dataset[0][1], _mask(0))


def test_unknown_layout_and_missing_mask_name_the_path(tmp_path):
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        SegmentationDataset(tmp_path, "train")
    _save_pair(tmp_path / "train" / "images" / "x.png", tmp_path / "elsewhere" / "x.png", _mask())
    with pytest.raises(DataError, match=r"x\.png: no mask for this image"):
        SegmentationDataset(tmp_path, "train")


def test_size_mismatch_names_both_files(tmp_path):
    _save_pair(tmp_path / "train" / "images" / "d.png", tmp_path / "train" / "masks" / "d.png", _mask())
    write_mask(tmp_path / "train" / "masks" / "d.png", _mask(h=10))
    with pytest.raises(DataError) as err:
        SegmentationDataset(tmp_path, "train")[0]
    message = str(err.value)
    assert "masks/d.png" in message and "images/d.png" in message and "16x10" in message and "16x12" in message


def test_out_of_range_labels_name_the_file_and_values(tmp_path):
    m = _mask()
    m[0, :3] = [9, 12, 255]
    _save_pair(tmp_path / "train" / "images" / "e.png", tmp_path / "train" / "masks" / "e.png", m)
    with pytest.raises(DataError, match=r"masks/e\.png: label values \[9, 12\] are >= num_classes=4"):
        SegmentationDataset(tmp_path, "train", num_classes=4)[0]


def test_rgb_colour_mask_is_refused_with_advice(tmp_path):
    _save_pair(tmp_path / "train" / "images" / "f.png", tmp_path / "train" / "masks" / "f.png", _mask())
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[:6] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "train" / "masks" / "f.png")
    with pytest.raises(DataError, match=r"masks/f\.png: mask is an RGB colour image.*convert"):
        SegmentationDataset(tmp_path, "train")[0]
    gray_as_rgb = np.stack([_mask()] * 3, -1)  # equal channels: a grayscale mask saved as RGB is fine
    Image.fromarray(gray_as_rgb).save(tmp_path / "train" / "masks" / "f.png")
    assert np.array_equal(read_mask(tmp_path / "train" / "masks" / "f.png"), _mask())


def test_reduce_zero_label(tmp_path):
    m = np.array([[0, 1, 5, 255], [150, 2, 0, 1]], np.uint8)
    _save_pair(tmp_path / "images" / "training" / "g.jpg", tmp_path / "annotations" / "training" / "g.png", m)
    _, got = SegmentationDataset(tmp_path, "train", reduce_zero_label=True, num_classes=150)[0]
    assert got.tolist() == [[255, 0, 4, 255], [149, 1, 255, 0]]


# -------------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 10, size=(6, 8)), np.ones((7, 9), np.int64)).astype(np.uint8)  # (42, 72)
    image = Image.fromarray(np.stack([mask * 20] * 3, -1))  # pixel value encodes the label
    transform = build_seg_train_transform(crop_size=(40, 48), scale=(72, 42), ratio_range=(0.5, 2.0),
                                          cat_max_ratio=0.75, hflip=1.0 if seed % 2 else 0.0, photometric=False,
                                          mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest-exact")
    pixels, labels = transform(image, mask)
    assert pixels.shape == (3, 40, 48) and labels.shape == (40, 48) and labels.dtype == torch.int64
    values = (pixels[0] * 255).round().long()
    real = labels != 255
    assert torch.equal(values[real], labels[real] * 20)
    assert torch.all(values[~real] == 0)  # padding: image 0, mask ignore


def test_photometric_distortion_leaves_the_mask_and_eval_keeps_its_size():
    torch.manual_seed(0)
    image, mask = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8), torch.randint(0, 5, (20, 30))
    for _ in range(5):
        _, same = PhotometricDistortion()(image, mask)
        assert same is mask
    pixels, labels = build_seg_eval_transform(scale=(60, 40))(Image.new("RGB", (30, 20)), mask.numpy())
    assert pixels.shape == (3, 40, 60) and labels.shape == (20, 30)
    normalized, _ = Normalize()(image, mask)
    assert normalized.dtype == torch.float32


# ------------------------------------------------------------------------------------ digits-seg + recipe
def test_digits_seg_maker_writes_a_folder_layout_dataset(tmp_path):
    root = tmp_path / "digits"
    summary = make_digits_seg(root, seed=1, n_train=6, n_val=3, min_size=48, max_size=72, digit_sizes=(20, 36))
    assert summary["num_train"] == 6 and summary["classes"][:2] == ["background", "0"] and len(summary["classes"]) == 11
    dataset = SegmentationDataset(root, "val")
    assert dataset.layout == "folder" and dataset.num_classes == 11 and len(dataset) == 3
    image, mask = dataset[0]
    assert Image.open(dataset.samples[0][1]).mode == "P"
    assert 48 <= image.width <= 72 and mask.max() <= 10 and (mask > 0).any()
    pixels = np.asarray(image).astype(int).sum(-1)
    assert pixels[mask > 0].mean() > pixels[mask == 0].mean() + 150  # bright ink on a dark canvas
    first = (root / "train" / "masks" / "00000.png").read_bytes()
    make_digits_seg(root, seed=1, n_train=6, n_val=3, min_size=48, max_size=72, digit_sizes=(20, 36))  # replaces
    assert (root / "train" / "masks" / "00000.png").read_bytes() == first  # same seed, same data
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not made by make_digits_seg"):
        make_digits_seg(tmp_path / "mine", n_train=1, n_val=1)


def test_palette_and_grayscale_masks_give_the_same_indices(tmp_path):
    mask = _mask(3, k=21)
    mask[2, 2] = 255
    write_mask(tmp_path / "p.png", mask)  # palette: the stored indices are the labels, whatever the colours
    Image.fromarray(mask).save(tmp_path / "l.png")  # grayscale: the values are the labels
    Image.fromarray(mask.astype(np.uint16) * 1).save(tmp_path / "i16.png")  # 16-bit grayscale, small values
    assert Image.open(tmp_path / "p.png").mode == "P"
    for name in ("p.png", "l.png", "i16.png"):
        got = read_mask(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, mask), name


def test_masks_that_cannot_be_indices_are_refused_naming_the_file(tmp_path):
    Image.fromarray((np.arange(12 * 16).reshape(12, 16) * 3).astype(np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png: mask values span 0\.\.573"):
        read_mask(tmp_path / "big.png")
    Image.new("LA", (4, 4)).save(tmp_path / "la.png")
    with pytest.raises(DataError, match=r"la\.png: unsupported mask mode 'LA'"):
        read_mask(tmp_path / "la.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read mask"):
        read_mask(tmp_path / "broken.png")


def test_voc_palette_and_missing_voc_files(tmp_path):
    palette = voc_palette()
    assert len(palette) == 768 and palette[:6] == [0, 0, 0, 128, 0, 0] and palette[-3:] == [224, 224, 192]
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    with pytest.raises(DataError, match=r"train\.txt: no such file \(VOC layout"):
        SegmentationDataset(tmp_path, "train")


def test_resize_crop_flip_pad_steps():
    torch.manual_seed(0)
    assert rescale_size(100, 300, (2048, 512)) == (512, 1536)  # the short edge reaches 512 first
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # the long edge reaches 2048 first
    image, mask = torch.zeros(3, 10, 20, dtype=torch.uint8), torch.arange(200).view(10, 20) % 7
    big, big_mask = RandomResize((40, 20), (1.0, 1.0))(image, mask)
    assert big.shape[-2:] == (20, 40) and big_mask.shape == (20, 40)
    assert set(big_mask.unique().tolist()) <= set(mask.unique().tolist())  # nearest: no new labels
    crop, crop_mask = RandomCrop((6, 8))(image, mask)
    assert crop.shape[-2:] == (6, 8) and crop_mask.shape == (6, 8)
    flipped, flipped_mask = RandomFlip(1.0)(image, mask)
    assert torch.equal(flipped_mask, mask.flip(-1))
    padded, padded_mask = Pad((12, 24))(image, mask)
    assert padded.shape[-2:] == (12, 24) and (padded_mask[10:] == 255).all() and (padded_mask[:, 20:] == 255).all()


def test_random_crop_avoids_crops_of_one_class_when_asked():
    mask = torch.zeros(40, 40, dtype=torch.uint8)
    mask[:, 30:] = 1  # class 1 only in the right quarter
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    torch.manual_seed(0)
    balanced = sum(len(RandomCrop(20, cat_max_ratio=0.75)(image, mask)[1].unique()) > 1 for _ in range(30))
    torch.manual_seed(0)
    plain = sum(len(RandomCrop(20, cat_max_ratio=1.0)(image, mask)[1].unique()) > 1 for _ in range(30))
    assert balanced > plain
