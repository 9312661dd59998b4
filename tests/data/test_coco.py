"""COCO JSON: round trips through files, every validation error, indexing and building."""

from __future__ import annotations

import copy
import json

import pytest
from pycocotools.coco import COCO

from avdet.data.coco import (
    CocoFormatError,
    coco_index,
    load_coco,
    make_coco,
    save_coco,
    validate_coco,
)


@pytest.fixture
def dataset() -> dict:
    return {
        "info": {"description": "two frames"},
        "images": [
            {"id": 1, "file_name": "a_000000.mp4", "width": 160, "height": 120},
            {"id": 7, "file_name": "b_000010.mp4", "width": 192, "height": 108},
            {"id": 9, "file_name": "c_000020.mp4", "width": 160, "height": 120},
        ],
        "annotations": [
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 160.0, 120.0]},
            {"id": 17, "image_id": 7, "category_id": 2, "bbox": [150.5, 50, 41.5, 58]},
        ],
        "categories": [{"id": 1, "name": "drum"}, {"id": 2, "name": "siren"}],
    }


def test_save_load_round_trip_and_pycocotools_reads_it(tmp_path, dataset):
    path = save_coco(tmp_path / "sub" / "instances_val.json", dataset)
    assert load_coco(path) == dataset
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temp file
    coco = COCO(str(path))
    assert coco.getAnnIds(imgIds=[1]) == [3, 4]
    assert coco.loadCats([2])[0]["name"] == "siren"


def test_coco_index_groups_by_image_and_keeps_images_without_boxes(dataset):
    images, by_image, categories = coco_index(dataset)
    assert sorted(images) == [1, 7, 9]
    assert [a["id"] for a in by_image[1]] == [3, 4]
    assert [a["id"] for a in by_image[7]] == [17]
    assert by_image[9] == []  # a negative image
    assert categories[1]["name"] == "drum"


def test_box_on_the_border_within_float_tolerance_is_valid(dataset):
    dataset["annotations"][2]["bbox"] = [150.5, 50, 41.5 + 1e-3, 58 + 1e-3]
    validate_coco(dataset, "border.json")


def _set(path: tuple, value):
    def edit(d: dict) -> None:
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return edit


_DELETE = object()

ERROR_CASES = {
    "missing images": (_set(("images",), _DELETE), ["missing required key 'images'"]),
    "missing categories": (_set(("categories",), _DELETE), ["'categories'"]),
    "annotations not a list": (_set(("annotations",), {}), ["'annotations' is dict"]),
    "duplicate image id": (_set(("images", 1, "id"), 1), ["image id 1 appears more than once"]),
    "duplicate annotation id": (
        _set(("annotations", 1, "id"), 3),
        ["annotation id 3 appears more than once"],
    ),
    "duplicate category id": (
        _set(("categories", 1, "id"), 1),
        ["category id 1 appears more than once"],
    ),
    "string image id": (_set(("images", 0, "id"), "1"), ["image record #0", "'1'"]),
    "bool annotation id": (_set(("annotations", 0, "id"), True), ["annotation record #0"]),
    "unknown image": (
        _set(("annotations", 2, "image_id"), 8),
        ["annotation id 17", "image id 8", "absent"],
    ),
    "unknown category": (
        _set(("annotations", 2, "category_id"), 5),
        ["annotation id 17", "category id 5", "absent"],
    ),
    "zero width": (
        _set(("annotations", 0, "bbox"), [10, 20, 0, 40]),
        ["annotation id 3", "non-positive"],
    ),
    "negative height": (
        _set(("annotations", 0, "bbox"), [10, 20, 30, -1]),
        ["annotation id 3", "non-positive"],
    ),
    "past the right edge": (
        _set(("annotations", 2, "bbox"), [150.5, 50, 42, 58]),
        ["annotation id 17", "outside its image id 7", "192x108"],
    ),
    "negative x": (
        _set(("annotations", 0, "bbox"), [-1, 20, 30, 40]),
        ["annotation id 3", "outside"],
    ),
    "three numbers": (_set(("annotations", 1, "bbox"), [1, 2, 3]), ["annotation id 4", "[x, y"]),
    "nan in box": (
        _set(("annotations", 1, "bbox"), [1, 2, float("nan"), 3]),
        ["annotation id 4", "finite"],
    ),
    "category id 0": (_set(("categories", 0, "id"), 0), ["category id 0", "background"]),
    "zero image width": (
        _set(("images", 2, "width"), 0),
        ["image id 9", "c_000020.mp4", "width 0"],
    ),
    "missing image height": (_set(("images", 2, "height"), _DELETE), ["image id 9", "height"]),
    "missing file_name": (_set(("images", 0, "file_name"), _DELETE), ["image id 1", "file_name"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_problem_is_reported_with_file_record_and_reason(tmp_path, dataset, case):
    edit, expected = ERROR_CASES[case]
    broken = copy.deepcopy(dataset)
    edit(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(CocoFormatError) as err:
        load_coco(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")
    for part in expected:
        assert part in message
    assert load_coco(path, validate=False) == json.loads(path.read_text())


def test_not_json_and_not_an_object(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match=r"bad\.json: not valid JSON"):
        load_coco(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CocoFormatError, match="top level is list"):
        load_coco(bad)


def test_save_refuses_an_invalid_dataset_and_writes_nothing(tmp_path, dataset):
    dataset["categories"][0]["id"] = 0
    with pytest.raises(CocoFormatError, match="category id 0"):
        save_coco(tmp_path / "out.json", dataset)
    assert list(tmp_path.iterdir()) == []


def test_make_coco_fills_ids_area_iscrowd_and_categories():
    dataset = make_coco(
        images=[
            {"file_name": "a.jpg", "width": 100, "height": 50},
            {"file_name": "b.jpg", "width": 64, "height": 64},
        ],
        annotations=[
            {"image_id": 2, "category_id": 2, "bbox": [1, 2, 10, 20]},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 50], "iscrowd": 1},
        ],
        categories=["flute", "bell"],
        info={"seed": 3},
    )
    assert [im["id"] for im in dataset["images"]] == [1, 2]
    assert [a["id"] for a in dataset["annotations"]] == [1, 2]
    assert dataset["annotations"][0]["area"] == 200.0
    assert [a["iscrowd"] for a in dataset["annotations"]] == [0, 1]
    assert dataset["categories"][1] == {"id": 2, "name": "bell", "supercategory": "object"}
    assert dataset["info"] == {"seed": 3}


def test_make_coco_keeps_given_ids_and_validates():
    dataset = make_coco(
        [{"id": 41, "file_name": "x.jpg", "width": 10, "height": 10}],
        [],
        [{"id": 5, "name": "fan"}],
    )
    assert dataset["images"][0]["id"] == 41 and dataset["annotations"] == []
    with pytest.raises(CocoFormatError, match=r"make_coco: annotation id 1 .* image id 2"):
        make_coco(
            [{"file_name": "x.jpg", "width": 10, "height": 10}],
            [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            ["fan"],
        )
