"""Hostile and odd input through the readers and transforms: random COCO annotations, MOT rows, masks and image
modes (property-based), decompression bombs, 1x1 and extreme images, EXIF rotation, paths leaving the dataset."""
import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from vistra.cli import main
from vistra.data.cls_transforms import build_eval_transform, build_train_transform
from vistra.data.coco import CocoDetection
from vistra.data.det_transforms import build_det_eval_transform, build_det_train_transform
from vistra.data.errors import DataError
from vistra.data.frame_pairs import FramePairDataset, build_pair_transform
from vistra.data.image_folder import ImageFolderDataset
from vistra.data.image_io import read_image
from vistra.data.paths import leaves_root
from vistra.data.seg_dataset import IGNORE_INDEX, SegmentationDataset, read_mask
from vistra.data.seg_transforms import build_seg_eval_transform, build_seg_train_transform
from vistra.tracking.mot_io import SeqInfo, read_gt, read_mot_txt, read_seqinfo, write_seqinfo

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COCO_DROPS = ("degenerate", "outside", "unknown_category", "unknown_image", "malformed", "missing_file_boxes")
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]


def _check_normalised_boxes(target: dict) -> int:
    """Every output box lies inside the image with a positive area, per-box entries stay aligned; returns count."""
    boxes = target["boxes"]  # (m, 4) normalised cxcywh
    cx, cy, w, h = boxes.unbind(-1)
    assert torch.isfinite(boxes).all()
    assert (w > 0).all() and (h > 0).all()
    eps = 1e-5
    assert (cx - w / 2 >= -eps).all() and (cx + w / 2 <= 1 + eps).all()
    assert (cy - h / 2 >= -eps).all() and (cy + h / 2 <= 1 + eps).all()
    for key in ("labels", "iscrowd", "area", "track_ids", "visibility"):
        if key in target:
            assert len(target[key]) == len(boxes), key
    return len(boxes)


# -------------------------------------------------------------------------------------------------- COCO
_coord = st.one_of(st.floats(-60, 60, allow_nan=False), st.integers(-80, 80),
                   st.sampled_from([0.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf")]))
_bbox = st.one_of(st.lists(_coord, min_size=4, max_size=4),
                  st.sampled_from([None, [], [1, 2, 3], "1,2,3,4", [1, 2, "3", 4], [True, 0, 5, 5], [[1], 2, 3, 4]]))


@st.composite
def _coco_case(draw):
    sizes = draw(st.lists(st.tuples(st.integers(1, 48), st.integers(1, 48)), min_size=1, max_size=3))
    ids = list(range(1, len(sizes) + 1))
    ann = st.fixed_dictionaries(
        {"bbox": _bbox,
         "category_id": st.sampled_from([1, 3, 1, 3, 2, 99, -1, "1", None, 1.0, True, [1]]),
         "image_id": st.sampled_from(ids + ids + [42, None, "1", 1.0, {"id": 1}]),
         "iscrowd": st.sampled_from([0, 0, 0, 1, True, None])},
        optional={"area": st.one_of(st.floats(allow_nan=True), st.just("big")),
                  "id": st.one_of(st.integers(1, 10_000), st.just("a"))})
    anns = draw(st.lists(st.one_of(ann, ann, ann, st.sampled_from([None, 7, "x", [1, 2]])), max_size=12))
    return {"sizes": sizes, "anns": anns, "missing_last": draw(st.booleans()), "sized": draw(st.booleans()),
            "include_crowd": draw(st.booleans())}


def _write_coco_case(root: Path, case: dict) -> Path:
    images = []
    for image_id, (width, height) in enumerate(case["sizes"], start=1):
        name = f"img{image_id}.png"
        if not (case["missing_last"] and image_id == len(case["sizes"])):
            Image.new("RGB", (width, height), (90, 20, 200)).save(root / name)
        entry = {"id": image_id, "file_name": name}
        if case["sized"]:
            entry.update(width=width, height=height)
        images.append(entry)
    anns = [dict(a, id=i + 1) if isinstance(a, dict) and "id" not in a else a for i, a in enumerate(case["anns"])]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


@PROPERTY
@given(case=_coco_case(), seed=st.integers(0, 2**16))
def test_random_coco_annotations_load_every_box_is_counted_and_transforms_keep_boxes_inside(case, seed):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ann_file = _write_coco_case(root, case)
        try:
            CocoDetection(root, ann_file, quiet=True)  # strict: either fine or a DataError naming a file
        except DataError as err:
            assert str(err).startswith(str(root))
        ds = CocoDetection(root, ann_file, skip_bad=True, include_crowd=case["include_crowd"], quiet=True)
        r = ds.report
        assert r["boxes"] + sum(r[k] for k in COCO_DROPS) == len(case["anns"])

        torch.manual_seed(seed)
        train = build_det_train_transform(scales=[16, 24, 32], max_size=64, crop_resize=[16, 24], crop_size=[8, 16])
        evaluation = build_det_eval_transform(size=32, max_size=64)
        targets_in = 0
        for index in range(len(ds)):
            image, target = ds[index]
            n = len(target["boxes"])
            targets_in += n
            for transform in (train, evaluation):
                before = transform.dropped
                out, result = transform(image, target)
                assert out.shape[-2:] == tuple(result["size"].tolist()) and torch.isfinite(out).all()
                assert _check_normalised_boxes(result) + transform.dropped - before == n
        assert targets_in == r["boxes"] - (0 if case["include_crowd"] else r["crowd"])


# --------------------------------------------------------------------------------------------------- MOT
_row = st.tuples(st.integers(-1, 5), st.integers(-2, 4), *[st.floats(-30, 40, allow_nan=False)] * 4,
                 st.sampled_from([0, 1, 0.5]), st.integers(-1, 3), st.floats(-1, 1, allow_nan=False)).map(
    lambda v: ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v))
_garbage = st.sampled_from(["1,2,3", "a,b,c,d,e,f", "1,1,nan,0,5,5", "0,1,0,0,5,5", "1.5,1,0,0,5,5", "",
                            "   ", "1 1 0 0 5 5", "1,1,0,0,inf,5", "1,1,0,0,5,5,,,", "1;1;0;0;5;5"])
_mot_lines = st.lists(st.one_of(_row, _row, _garbage, st.text(st.characters(blacklist_categories=("Cs",)),
                                                                 max_size=12)), max_size=15)


@PROPERTY
@given(lines=_mot_lines)
def test_random_mot_rows_are_kept_or_listed_as_skipped(lines):
    with tempfile.TemporaryDirectory() as folder:
        seq = Path(folder) / "SEQ"
        write_seqinfo(seq, SeqInfo("SEQ", 3, 25.0, 16, 12, "img1", ".png"))
        (seq / "gt").mkdir()
        path = seq / "gt" / "gt.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rows = sum(1 for line in path.read_text().splitlines() if line.strip())
        try:
            strict = read_mot_txt(path)
            assert len(strict) == rows
        except DataError as err:
            assert str(err).startswith(f"{path}: line ")
        table = read_mot_txt(path, skip_bad=True)
        assert len(table) + len(table.skipped) == rows
        assert (table.frames >= 1).all() and (table.boxes[:, 2:] > 0).all() and np.isfinite(table.boxes).all()
        gt = read_gt(seq, skip_bad=True)
        assert len(gt) + len(gt.skipped) == rows and (gt.frames <= 3).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_row, min_size=1, max_size=10), train=st.booleans(), seed=st.integers(0, 2**16))
def test_frame_pairs_from_random_gt_keep_boxes_inside_and_count_drops(lines, train, seed):
    with tempfile.TemporaryDirectory() as folder:
        seq = Path(folder) / "SEQ"
        write_seqinfo(seq, SeqInfo("SEQ", 3, 25.0, 16, 12, "img1", ".png"))
        (seq / "img1").mkdir()
        for t in (1, 2, 3):
            Image.new("RGB", (16, 12), (t * 60, 0, 0)).save(seq / "img1" / f"{t:06d}.png")
        (seq / "gt").mkdir()
        (seq / "gt" / "gt.txt").write_text("\n".join(["2,9,3,2,6,5,1,1,1", *lines]) + "\n")  # one pair at least
        transform = build_pair_transform(train=train, scales=(16, 24), max_size=48, crop_resize=(16, 24),
                                         crop_size=(8, 16), eval_size=24)
        ds = FramePairDataset([seq], transform, max_gap=1, skip_bad=True)
        gt = ds.sequences[0][2]
        torch.manual_seed(seed)
        for index in range(len(ds)):
            _, frame = ds.samples[index]
            before = transform.dropped + transform.finish.dropped
            _, target_a, _, target_b = ds[index]
            kept = _check_normalised_boxes(target_a) + _check_normalised_boxes(target_b)
            dropped = transform.dropped + transform.finish.dropped - before
            assert kept + dropped == len(gt.at_frame(frame - 1)) + len(gt.at_frame(frame))


# ------------------------------------------------------------------------------------------ segmentation
@st.composite
def _mask_case(draw):
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["L", "P", "RGB", "RGBA", "I;16", "1"]))
    num_classes = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = {"1": 1, "I;16": draw(st.sampled_from([num_classes, 300]))}.get(mode, num_classes + 2)
    values = rng.integers(0, top + 1, size=(height, width))
    values[rng.random((height, width)) < 0.1] = IGNORE_INDEX if mode != "1" else 1
    return {"values": values, "mode": mode, "num_classes": num_classes, "grey": draw(st.booleans()),
            "reduce_zero_label": draw(st.booleans()), "train": draw(st.booleans())}


def _mask_image(values: np.ndarray, mode: str, grey: bool) -> Image.Image:
    if mode == "1":
        return Image.fromarray(values.astype(bool))
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16))
    if mode in ("RGB", "RGBA"):
        other = values if grey else (values + 1) % 256
        channels = [values, values, other] + ([np.full_like(values, 128)] if mode == "RGBA" else [])
        return Image.fromarray(np.stack(channels, -1).astype(np.uint8), mode)
    image = Image.fromarray(values.astype(np.uint8))
    if mode == "P":
        image.putpalette(list(range(256)) * 3)
    return image


def _expected_mask_problem(case: dict) -> str | None:
    """The DataError a mask should give (a regex), or None when it is usable."""
    values = case["values"]
    if case["mode"] in ("RGB", "RGBA") and not case["grey"]:
        return "colour image"
    if values.max() > 255:
        return "class indices must fit in 0..255"
    labels = values.astype(np.int64) if case["mode"] != "1" else values.astype(bool).astype(np.int64)
    if case["reduce_zero_label"]:
        labels = np.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1)
    if ((labels >= case["num_classes"]) & (labels != IGNORE_INDEX)).any():
        return "are >= num_classes"
    return None


@PROPERTY
@given(case=_mask_case())
def test_random_masks_load_as_valid_labels_or_fail_with_the_documented_error(case):
    height, width = case["values"].shape
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "train" / "images").mkdir(parents=True)
        (root / "train" / "masks").mkdir(parents=True)
        Image.new("RGB", (width, height), (10, 120, 30)).save(root / "train" / "images" / "a.png")
        _mask_image(case["values"], case["mode"], case["grey"]).save(root / "train" / "masks" / "a.png")
        crop = 24
        transform = (build_seg_train_transform(crop_size=crop, scale=(64, 32)) if case["train"]
                     else build_seg_eval_transform(scale=(64, 32)))
        ds = SegmentationDataset(root, "train", reduce_zero_label=case["reduce_zero_label"], transform=transform,
                                 num_classes=case["num_classes"])
        problem = _expected_mask_problem(case)
        if problem is not None:
            with pytest.raises(DataError, match=problem) as err:
                ds[0]
            assert str(err.value).startswith(str(root / "train" / "masks" / "a.png"))
            return
        image, mask = ds[0]
    assert torch.isfinite(image).all() and image.shape[0] == 3
    assert mask.shape == ((crop, crop) if case["train"] else (height, width))
    labels = set(mask.unique().tolist())
    assert labels <= set(range(case["num_classes"])) | {IGNORE_INDEX}


# ---------------------------------------------------------------------------------------- image modes
_MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]


def _random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        top = {"I;16": 65535, "I": 70000, "F": 300.0}[mode]
        values = rng.uniform(-10 if mode != "I;16" else 0, top, size=(height, width))
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(values.astype(dtype), mode if mode != "I;16" else None)
    bands = len(Image.new(mode, (1, 1)).getbands())
    noise = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    if mode == "P":
        return noise.convert("P")
    if mode == "PA":
        return Image.merge("PA", (noise.convert("L"), noise.getchannel(0)))
    if mode == "CMYK":
        return noise.convert("CMYK")
    image = noise.convert(mode) if bands < 3 else noise
    return image.convert(mode)


@PROPERTY
@given(mode=st.sampled_from(_MODES), width=st.integers(1, 40), height=st.integers(1, 40),
       fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "WEBP", "BMP"]), seed=st.integers(0, 2**16))
def test_any_image_mode_and_size_reads_as_rgb_and_goes_through_the_classification_transforms(mode, width, height,
                                                                                            fmt, seed):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x.{fmt.lower()}"
        try:
            _random_image(mode, width, height, seed).save(path, format=fmt)
        except (OSError, ValueError, KeyError):
            assume(False)  # this format cannot hold this mode
        image = read_image(path)
    assert image.mode == "RGB" and image.size == (width, height)
    torch.manual_seed(seed)
    for transform in (build_eval_transform(32), build_train_transform(32)):
        out = transform(image)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------- specific cases
def _forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (the pixel data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_header_claiming_50000x50000_is_a_data_error_naming_the_file(tmp_path):
    bomb = _forged_png(tmp_path / "bomb.png", 50000, 50000)
    assert bomb.stat().st_size < 200
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image \(decompression bomb: 2500000000 pixels, "
                                        r"limit 89478485"):
        read_image(bomb)
    with pytest.raises(DataError, match=r"bomb\.png: cannot read mask \(decompression bomb: 2500000000 pixels"):
        read_mask(bomb)
    (tmp_path / "cls" / "a").mkdir(parents=True)
    _forged_png(tmp_path / "cls" / "a" / "bomb.png", 50000, 50000)
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image \(decompression bomb"):
        ImageFolderDataset(tmp_path / "cls")[0]
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "bomb.png", "width": 50000,
                                                               "height": 50000}], "annotations": [],
                                                   "categories": CATEGORIES}))
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image \(decompression bomb"):
        CocoDetection(tmp_path, tmp_path / "ann.json", quiet=True)[0]


def test_the_pixel_limit_is_pillows_and_is_enforced_at_the_limit_itself(tmp_path, monkeypatch):
    Image.new("L", (20, 10)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 199)  # Pillow alone would only warn up to 398
    with pytest.raises(DataError, match=r"a\.png: cannot read image \(decompression bomb: 20x10 = 200 pixels, "
                                        r"limit 199; raise PIL.Image.MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png: cannot read mask \(decompression bomb: 20x10 = 200 pixels"):
        read_mask(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    assert read_image(tmp_path / "a.png").size == (20, 10) and read_mask(tmp_path / "a.png").shape == (10, 20)


@pytest.mark.parametrize("size", [(1, 1), (1, 3000), (3000, 1)])
def test_tiny_and_extreme_images_go_through_every_tasks_eval_transform(size):
    image = Image.new("RGB", size, (200, 100, 50))
    width, height = size
    assert build_eval_transform()(image).shape == (3, 224, 224)
    box = {"boxes": torch.tensor([[0.0, 0.0, width, height]]), "labels": torch.tensor([1])}
    out, target = build_det_eval_transform()(image, box)
    assert min(out.shape[-2:]) >= 1 and max(out.shape[-2:]) <= 1333 and _check_normalised_boxes(target) == 1
    out, target = build_det_train_transform()(image, box)
    assert min(out.shape[-2:]) >= 1 and _check_normalised_boxes(target) <= 1
    seg_image, seg_mask = build_seg_eval_transform()(image, np.zeros((height, width), np.uint8))
    assert min(seg_image.shape[-2:]) >= 1 and seg_mask.shape == (height, width)
    pair = build_pair_transform(train=False)(image, dict(box, track_ids=torch.tensor([4])), image,
                                             dict(box, track_ids=torch.tensor([4])))
    assert min(pair[0].shape[-2:]) >= 1 and _check_normalised_boxes(pair[3]) == 1


def test_exif_rotated_jpeg_is_read_upright_with_its_coco_boxes_in_the_upright_frame(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # a 40x20 file (H=20, W=40) ...
    stored[2:8, 10:30] = 255  # ... with a white block at rows 2..8, columns 10..30
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown as 20x40
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "r.jpg")
    assert upright.size == (20, 40)
    # turned clockwise, stored (row y, column x) shows at (row x, column H-1-y): the block spans x 12..18, y 10..30
    box = [12, 10, 6, 20]
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "r.jpg", "width": 20, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 0}],
        "categories": CATEGORIES}))
    image, target = CocoDetection(tmp_path, tmp_path / "ann.json", quiet=True)[0]
    assert image.size == (20, 40) and target["boxes"].tolist() == [[12, 10, 18, 30]]
    rows, cols = np.nonzero(np.asarray(image.convert("L")) > 128)
    assert abs(cols.min() - 12) <= 1 and abs(cols.max() + 1 - 18) <= 1
    assert abs(rows.min() - 10) <= 1 and abs(rows.max() + 1 - 30) <= 1


# ------------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("name, leaves", [
    ("a.png", False), ("sub/a.png", False), ("./a.png", False), ("sub/../a.png", False),
    ("../a.png", True), ("sub/../../a.png", True), ("/etc/passwd", True), ("../../etc/passwd", True),
    ("C:\\data\\a.png", True), ("..\\a.png", True), ("\\\\server\\share\\a.png", True),
])
def test_leaves_root(name, leaves):
    assert leaves_root(name) == leaves


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.png"])
def test_coco_file_names_leaving_the_image_folder_are_refused_unless_allowed(tmp_path, file_name):
    folder = tmp_path / "data" / "images"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "data" / "outside.png")
    ann = tmp_path / "data" / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 3, "file_name": file_name}], "annotations": [],
                               "categories": CATEGORIES}))
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=rf"ann\.json: image id 3: file_name '{file_name}' leaves the dataset "
                                            r"root .*allow_outside_root=True"):
            CocoDetection(folder, ann, skip_bad=skip_bad, quiet=True)
    if file_name == "sub/../../outside.png":
        ds = CocoDetection(folder, ann, allow_outside_root=True, quiet=True)
        assert ds[0][0].size == (8, 6)


def test_voc_split_list_leaving_the_root_is_refused_unless_allowed(tmp_path):
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(tmp_path / "stolen.jpg")
    Image.new("L", (4, 3)).save(tmp_path / "stolen.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("../../stolen\n")
    with pytest.raises(DataError, match=r"train\.txt: image 'JPEGImages/\.\./\.\./stolen\.jpg' leaves the dataset"):
        SegmentationDataset(root, "train")
    ds = SegmentationDataset(root, "train", allow_outside_root=True)
    assert ds[0][1].shape == (3, 4)
    settings = ["--set", "crop_size=32", "scale=[32,32]", "val_split=null", "epochs=1", "batch_size=1",
                "drop_last=false", "progress=false", "model.fpn_channels=8", "model.channels=8"]
    args = ["train", "segment", "--model", "semfpn_pvt_v2_digits", "--data", str(root), *settings]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert main([*args, "--out", str(tmp_path / "run"), "--allow-outside-root"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_mot_imdir_and_imext_leaving_the_sequence_are_refused_unless_allowed(tmp_path):
    seq = tmp_path / "SEQ"
    write_seqinfo(seq, SeqInfo("SEQ", 3, 25.0, 16, 12, "../../elsewhere", ".jpg"))
    with pytest.raises(DataError, match=r"seqinfo\.ini: imDir '\.\./\.\./elsewhere' leaves the dataset root"):
        read_seqinfo(seq)
    assert read_seqinfo(seq, allow_outside_root=True).im_dir == "../../elsewhere"
    write_seqinfo(seq, SeqInfo("SEQ", 3, 25.0, 16, 12, "img1", "/../../x.jpg"))
    with pytest.raises(DataError, match=r"seqinfo\.ini: imExt '/\.\./\.\./x\.jpg' is not a file extension"):
        read_seqinfo(seq)
