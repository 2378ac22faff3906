"""Detection data: COCO json loading with bad-input handling, box-aware transforms, padded batches, digits-det."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors

from vistra.data.batching import collate_detection
from vistra.data.coco import CocoDetection, build_coco
from vistra.data.det_transforms import RandomSizeCrop, build_det_eval_transform, build_det_train_transform
from vistra.data.digits_det import make_digits_det
from vistra.data.errors import DataError

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]


def _write_coco(folder, images, annotations, categories=CATEGORIES, name="ann.json"):
    """images: list of (id, width, height); writes img<id>.png files and the json -> (img folder, json path)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, width, height in images:
        Image.new("RGB", (width, height), (image_id * 20 % 255, 0, 0)).save(folder / f"img{image_id}.png")
        entries.append({"id": image_id, "file_name": f"img{image_id}.png", "width": width, "height": height})
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    path = folder / name
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return folder, path


def _ann(image_id, bbox, category_id=1, **extra):
    return {"image_id": image_id, "bbox": bbox, "category_id": category_id, **extra}


# ------------------------------------------------------------------------------------------------ COCO
def test_clean_file_gives_ids_as_labels_xyxy_boxes_and_sizes(tmp_path, capsys):
    folder, ann = _write_coco(tmp_path, [(7, 40, 30)], [_ann(7, [2, 3, 10, 5], 3), _ann(7, [0, 0, 4, 4], 1)])
    ds = CocoDetection(folder, ann)
    assert capsys.readouterr().err.strip() == "ann.json: 1 images, 2 boxes"
    assert len(ds) == 1 and ds.num_classes == 4 and ds.categories == {1: "cat", 3: "dog"}
    image, target = ds[0]
    assert image.size == (40, 30) and image.mode == "RGB"
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4]]
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [3, 1] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 7
    assert target["orig_size"].tolist() == [30, 40] and target["size"].tolist() == [30, 40]
    assert target["area"].tolist() == [50, 16] and target["iscrowd"].tolist() == [0, 0]


def test_crowd_boxes_are_no_training_targets_but_stay_in_the_ground_truth(tmp_path):
    folder, ann = _write_coco(tmp_path, [(1, 50, 50)], [_ann(1, [1, 1, 10, 10]), _ann(1, [20, 20, 9, 9], iscrowd=1)])
    ds = CocoDetection(folder, ann, quiet=True)
    assert ds[0][1]["labels"].tolist() == [1]
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 2 and ds.report["crowd"] == 1
    with_crowd = CocoDetection(folder, ann, include_crowd=True, quiet=True)[0][1]
    assert with_crowd["iscrowd"].tolist() == [0, 1]


def test_bad_boxes_are_clipped_or_dropped_and_counted_in_one_line(tmp_path, capsys):
    anns = [
        _ann(1, [5, 5, 10, 10]),  # fine
        _ann(1, [-4, 10, 10, 10]),  # partly left of the image: clipped
        _ann(1, [35, 35, 20, 20]),  # partly beyond the bottom right: clipped
        _ann(1, [10, 50, 10, 10]),  # entirely below: dropped
        _ann(1, [3, 3, 0, 5]),  # zero width: dropped
        _ann(1, [3, 3, 4, -2]),  # negative height: dropped
        _ann(2, [1, 1, float("nan"), 2]),  # NaN: dropped
    ]
    folder, ann = _write_coco(tmp_path, [(1, 40, 40), (2, 20, 20), (3, 20, 20)], anns)
    ds = CocoDetection(folder, ann)
    line = capsys.readouterr().err.strip()
    assert line == ("ann.json: 3 images, 3 boxes; 2 boxes clipped, 3 degenerate boxes dropped, "
                    "1 box outside the image dropped, 2 images without annotations")
    assert ds.summary == line
    r = ds.report
    assert (r["clipped"], r["degenerate"], r["outside"], r["no_annotations"]) == (2, 3, 1, 2)
    assert ds[0][1]["boxes"].tolist() == [[5, 5, 15, 15], [0, 10, 6, 20], [35, 35, 40, 40]]
    assert ds[0][1]["area"].tolist()[1:] == [60, 25]  # clipped boxes get their new area
    empty = ds[1][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_unknown_categories_raise_naming_file_and_ids_or_are_dropped_with_skip_bad(tmp_path, capsys):
    folder, ann = _write_coco(tmp_path, [(1, 30, 30)], [_ann(1, [1, 1, 5, 5], 1), _ann(1, [1, 1, 5, 5], 9),
                                                        _ann(1, [2, 2, 5, 5], 9), _ann(1, [1, 1, 5, 5], 42)])
    with pytest.raises(DataError, match=r"ann\.json: 3 annotations with category ids 9, 42") as err:
        CocoDetection(folder, ann)
    assert str(err.value).startswith(str(ann))
    ds = CocoDetection(folder, ann, skip_bad=True)
    assert "3 boxes of unknown categories dropped" in capsys.readouterr().err
    assert ds.report["unknown_category"] == 3 and ds[0][1]["labels"].tolist() == [1]


def test_missing_image_files_raise_naming_the_path_or_are_skipped(tmp_path, capsys):
    folder, ann = _write_coco(tmp_path, [(1, 30, 30), (2, 30, 30)], [_ann(1, [1, 1, 5, 5]), _ann(2, [1, 1, 5, 5])])
    (folder / "img1.png").unlink()
    with pytest.raises(DataError, match="img1.png: image file does not exist"):
        CocoDetection(folder, ann)
    ds = CocoDetection(folder, ann, skip_bad=True)
    assert "1 missing image file skipped" in capsys.readouterr().err
    assert ds.ids == [2] and len(ds) == 1 and ds.report["missing_files"] == 1 and ds.report["boxes"] == 1
    assert ds.coco.getImgIds() == [2]


def test_corrupt_json_names_the_file_and_the_error_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON: .* at line 2 column 12"):
        CocoDetection(tmp_path, path)
    with pytest.raises(DataError, match="annotation file does not exist"):
        CocoDetection(tmp_path, tmp_path / "nope.json")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no 'categories' list"):
        CocoDetection(tmp_path, path)


def test_unreadable_image_raises_or_is_passed_over_with_skip_bad(tmp_path):
    folder, ann = _write_coco(tmp_path, [(1, 30, 30), (2, 30, 30)], [_ann(2, [1, 1, 5, 5])])
    (folder / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="img1.png: cannot read image"):
        CocoDetection(folder, ann, quiet=True)[0]
    ds = CocoDetection(folder, ann, skip_bad=True, quiet=True)
    assert ds[0][1]["image_id"] == 2 and ds.report["unreadable"] == 1


def test_exif_rotated_files_are_read_the_way_the_annotations_see_them(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": viewers show this 40x20 file as 20x40
    Image.new("RGB", (40, 20)).save(tmp_path / "a.jpg", exif=exif)
    Image.new("RGB", (40, 20)).save(tmp_path / "b.jpg", exif=exif)
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 20},  # annotated on the stored pixels
              {"id": 2, "file_name": "b.jpg"}]  # no size given: taken from the file, upright
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": [], "categories": CATEGORIES}))
    ds = CocoDetection(tmp_path, tmp_path / "a.json", quiet=True)
    assert ds[0][0].size == (40, 20) and ds[1][0].size == (20, 40)
    assert ds.coco.imgs[2]["width"] == 20


def test_build_coco_finds_the_standard_layouts_or_says_what_it_expected(tmp_path):
    _write_coco(tmp_path / "val2017", [(1, 20, 20)], [], name="x.json")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017" / "x.json").rename(tmp_path / "annotations" / "instances_val2017.json")
    assert len(build_coco(tmp_path, "val", quiet=True)) == 1
    with pytest.raises(DataError, match="no train split found: expected .*train2017/ with"):
        build_coco(tmp_path, "train")
    explicit = build_coco(None, img_folder=tmp_path / "val2017",
                          ann_file=tmp_path / "annotations" / "instances_val2017.json", quiet=True)
    assert len(explicit) == 1


# ------------------------------------------------------------------------------------------ transforms
def _painted(width, height, box):
    """A black (H, W) image with the xyxy integer box painted white, and its target."""
    pixels = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([5]),
              "iscrowd": torch.tensor([0]), "area": torch.tensor([1.0]), "image_id": 3,
              "orig_size": torch.tensor([height, width])}
    return Image.fromarray(pixels), target


@st.composite
def _image_and_box(draw):
    width, height = draw(st.integers(24, 160)), draw(st.integers(24, 160))
    x0, y0 = draw(st.integers(0, width - 12)), draw(st.integers(0, height - 12))
    x1, y1 = draw(st.integers(x0 + 12, width)), draw(st.integers(y0 + 12, height))
    return width, height, (x0, y0, x1, y1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_image_and_box(), seed=st.integers(0, 2**16))
def test_train_transform_keeps_boxes_inside_and_on_their_pixels(case, seed):
    width, height, box = case
    torch.manual_seed(seed)
    transform = build_det_train_transform(scales=[48, 64, 80], max_size=120, crop_resize=[40, 56],
                                          crop_size=[24, 48], mean=(0, 0, 0), std=(1, 1, 1))
    image, target = transform(*_painted(width, height, box))
    H, W = image.shape[-2:]
    assert target["size"].tolist() == [H, W] and target["orig_size"].tolist() == [height, width]
    assert min(H, W) in (48, 64, 80) or max(H, W) <= 120
    white = image.mean(0) > 0.5  # (H, W)
    n = len(target["boxes"])
    assert n <= 1 and [len(target[k]) for k in ("labels", "iscrowd", "area")] == [n] * 3
    if n == 0:  # cropped away: at most a sliver of the box's pixels may remain at the crop edge
        assert transform.dropped == 1 and white.sum() <= max(H, W) * 2
        return
    assert target["labels"].tolist() == [5]
    cx, cy, w, h = target["boxes"][0].tolist()
    x0, y0, x1, y1 = (cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H
    assert -1e-4 <= x0 < x1 <= W + 1e-4 and -1e-4 <= y0 < y1 <= H + 1e-4
    rows, cols = np.nonzero(white.numpy())
    if len(rows) == 0:  # the kept part is thinner than a pixel after resizing
        assert min(x1 - x0, y1 - y0) < 2
        return
    # the white pixels fill the box: edges agree to within resampling blur, which a crop of a downscaled image
    # that is then upscaled (up to 80 / 24 here) widens to about 2 pixels
    tol = 2.5
    assert abs(cols.min() - x0) <= tol and abs(cols.max() + 1 - x1) <= tol
    assert abs(rows.min() - y0) <= tol and abs(rows.max() + 1 - y1) <= tol


def test_eval_transform_resizes_the_shorter_side_and_normalises():
    image, target = _painted(200, 100, (20, 10, 60, 50))
    out, t = build_det_eval_transform(size=50, max_size=1000)(image, target)
    assert out.shape == (3, 50, 100) and out.dtype == torch.float32
    assert torch.allclose(t["boxes"], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    assert t["size"].tolist() == [50, 100] and t["area"].tolist() == [20 * 20]
    assert out[:, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], abs=1e-5)
    capped, _ = build_det_eval_transform(size=80, max_size=120)(image, target)  # 80x160 would exceed 120
    assert capped.shape[-2:] == (60, 120)
    same, t = build_det_eval_transform(size=None)(image, target)
    assert same.shape[-2:] == (100, 200)


def test_random_size_crop_stays_within_bounds_and_the_image():
    torch.manual_seed(0)
    crop = RandomSizeCrop(20, 30)
    for _ in range(20):
        h, w = crop(tv_tensors.Image(torch.zeros(3, 25, 100))).shape[-2:]
        assert 20 <= h <= 25 and 20 <= w <= 30
    with pytest.raises(ValueError):
        RandomSizeCrop(10, 5)


# ------------------------------------------------------------------------------------------- batching
def test_collate_pads_bottom_right_and_masks_the_padding():
    a, b = torch.ones(3, 4, 6), torch.full((3, 5, 3), 2.0)
    images, mask, targets = collate_detection([(a, {"id": 0}), (b, {"id": 1})])
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    assert [t["id"] for t in targets] == [0, 1]
    assert (images[0, :, :4, :6] == 1).all() and (images[0, :, 4:] == 0).all()
    assert (images[1, :, :, :3] == 2).all() and (images[1, :, :, 3:] == 0).all()
    assert not mask[0, :4].any() and mask[0, 4:].all()
    assert not mask[1, :, :3].any() and mask[1, :, 3:].all()
    images, mask, _ = collate_detection([(a, {}), (b, {})], size_divisibility=4)
    assert images.shape[-2:] == (8, 8) and mask[:, 5:].all() and mask[:, :, 6:].all()
    with pytest.raises(ValueError):
        collate_detection([])


# ------------------------------------------------------------------------------------------ digits-det
def test_digits_det_maker_writes_valid_deterministic_coco(tmp_path):
    out = tmp_path / "dd"
    summary = make_digits_det(out, n_train=6, n_val=3, seed=1)
    assert summary["num_train"] == 6 and summary["num_val"] == 3
    for split, n in (("train", 6), ("val", 3)):
        data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == list(range(10))
        assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
        assert len(data["images"]) == n == len(list((out / split).glob("*.png")))
        assert len(data["annotations"]) == summary[f"boxes_{split}"]
        per_image = {i["id"]: 0 for i in data["images"]}
        sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 128 <= width <= 320 and 128 <= height <= 320 and 0 <= a["category_id"] <= 9
            per_image[a["image_id"]] += 1
        assert all(1 <= k <= 8 for k in per_image.values())
        ds = build_coco(out, split, quiet=True)
        assert len(ds) == n and ds.num_classes == 10
        assert all(ds.report[k] == 0 for k in ("clipped", "degenerate", "outside", "no_annotations"))
    first = (out / "train" / "000001.png").read_bytes()
    again = make_digits_det(out, n_train=2, n_val=1, seed=1)  # re-run in place: replaced, a prefix of before
    assert again["num_train"] == 2 and len(list((out / "train").glob("*.png"))) == 2
    assert (out / "train" / "000001.png").read_bytes() == first
    make_digits_det(out, n_train=2, n_val=1, seed=2)
    assert (out / "train" / "000001.png").read_bytes() != first


def test_digits_det_maker_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not made by make_digits_det"):
        make_digits_det(tmp_path, n_train=1, n_val=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
