"""CocoDetectionDataset on real JPEG files: targets, label mapping, flips, negatives, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from avdet.data.coco import CocoFormatError
from avdet.detection.dataset import CategoryMap, CocoDetectionDataset, collate_fn, hflip


def _json(path):
    return json.loads(path.read_text())


def test_items_match_the_json_and_labels_map_back(shapes_coco):
    path = shapes_coco(num_images=5, num_classes=2, negatives=1)
    coco = _json(path)
    dataset = CocoDetectionDataset(path, train=False)  # image_dir defaults to the JSON's folder
    assert len(dataset) == 5 and dataset.num_negatives == 1
    assert dataset.categories.category_ids == [10, 20]
    by_image = {ann["image_id"]: ann for ann in coco["annotations"]}
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, 96, 128) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        ann = by_image.get(target["image_id"])
        if ann is None:  # the negative image
            assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
            continue
        x, y, w, h = ann["bbox"]
        torch.testing.assert_close(target["boxes"], torch.tensor([[x, y, x + w, y + h]]))
        label = int(target["labels"][0])
        assert dataset.categories.category_id(label) == ann["category_id"]
        # the pixels inside the box are the drawn rectangle, not noise
        crop = image[:, int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2]
        assert crop.std(dim=(1, 2)).max() < 0.05


def test_category_map_round_trip_and_background():
    cats = CategoryMap([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}, {"id": 12, "name": "c"}])
    assert cats.names == ["a", "b", "c"]
    assert [cats.label(c) for c in (3, 7, 12)] == [1, 2, 3]
    assert [cats.category_id(cats.label(c)) for c in (3, 7, 12)] == [3, 7, 12]
    with pytest.raises(ValueError, match="label 0 is outside 1..3"):
        cats.category_id(0)


def test_flip_moves_boxes_with_the_pixels(shapes_coco):
    path = shapes_coco(num_images=2, num_classes=2)
    plain = CocoDetectionDataset(path, train=False)
    flipped = CocoDetectionDataset(path, train=True, flip_prob=1.0)
    for index in range(2):
        image, target = plain[index]
        fimage, ftarget = flipped[index]
        torch.testing.assert_close(fimage, image.flip(-1))
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        torch.testing.assert_close(ftarget["boxes"], torch.tensor([[128 - x1, y0, 128 - x0, y1]]))
        fx0, fy0, fx1, fy1 = (int(v) for v in ftarget["boxes"][0])
        inside = fimage[:, fy0 + 2 : fy1 - 2, fx0 + 2 : fx1 - 2]
        assert inside.std(dim=(1, 2)).max() < 0.05  # the shape is inside the flipped box
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    image = torch.rand(3, 50, 60)
    twice = hflip(*hflip(image, boxes))
    torch.testing.assert_close(twice[0], image)
    torch.testing.assert_close(twice[1], boxes)


def test_negatives_are_kept_by_default_or_dropped(shapes_coco):
    path = shapes_coco(num_images=6, negatives=2)
    kept = CocoDetectionDataset(path)
    assert (len(kept), kept.num_negatives, kept.num_dropped) == (6, 2, 0)
    dropped = CocoDetectionDataset(path, keep_negatives=False)
    assert (len(dropped), dropped.num_negatives, dropped.num_dropped) == (4, 0, 2)
    assert all(len(dropped[i][1]["boxes"]) == 1 for i in range(len(dropped)))


def test_crowd_boxes_are_not_targets(shapes_coco):
    path = shapes_coco(num_images=2)
    coco = _json(path)
    coco["annotations"][0]["iscrowd"] = 1
    path.write_text(json.dumps(coco))
    dataset = CocoDetectionDataset(path)
    assert dataset.num_negatives == 1
    assert dataset[0][1]["boxes"].shape == (0, 4)


def test_collate_keeps_lists(shapes_coco):
    dataset = CocoDetectionDataset(shapes_coco(num_images=2))
    images, targets = collate_fn([dataset[0], dataset[1]])
    assert len(images) == 2 and images[0].shape == (3, 96, 128)
    assert [t["image_id"] for t in targets] == [100, 101]


def test_bad_json_names_the_file_and_record(shapes_coco):
    path = shapes_coco(num_images=2)
    coco = _json(path)
    coco["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(coco))
    with pytest.raises(CocoFormatError, match=r"train\.json: annotation id 1 .*image id 999"):
        CocoDetectionDataset(path)
    path.write_text("{not json")
    with pytest.raises(CocoFormatError, match=r"train\.json: not valid JSON"):
        CocoDetectionDataset(path)


def test_missing_or_resized_image_is_a_clear_error(shapes_coco):
    path = shapes_coco(num_images=3)
    (path.parent / "images" / "001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image files not found .*images/001\.jpg"):
        CocoDetectionDataset(path)
    path = shapes_coco(num_images=1)
    coco = _json(path)
    coco["images"][0]["width"] = 200
    path.write_text(json.dumps(coco))
    dataset = CocoDetectionDataset(path)
    with pytest.raises(CocoFormatError, match=r"000\.jpg: image is 128x96 but .* 200x96"):
        dataset[0]
