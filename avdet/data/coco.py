"""COCO detection JSON: load, validate, save, index and build (every COCO file avdet reads goes here).

Validation catches what silently breaks a torchvision detector or pycocotools evaluation: duplicate
ids, annotations pointing at missing images or categories, empty or out-of-image boxes, and a
category id 0, which torchvision reserves for the background class.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from avdet.utils.io import atomic_write_json

# Boxes may overshoot the image by this many pixels (float rounding when rescaling boxes).
BBOX_TOLERANCE = 1e-2

_REQUIRED_KEYS = ("images", "annotations", "categories")


class CocoFormatError(ValueError):
    """A COCO file or dict is malformed; the message names the file, the record and the problem."""


def load_coco(path: str | os.PathLike, validate: bool = True) -> dict:
    """Read a COCO detection JSON file and (by default) validate it."""
    path = Path(path)
    try:
        dataset = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path}: not valid JSON ({err})") from None
    if validate:
        validate_coco(dataset, str(path))
    return dataset


def save_coco(path: str | os.PathLike, dataset: dict, validate: bool = True) -> Path:
    """Validate `dataset` and write it atomically (a killed run never leaves half a file)."""
    path = Path(path)
    if validate:
        validate_coco(dataset, str(path))
    atomic_write_json(path, dataset)
    return path


def validate_coco(dataset: Any, source: str) -> None:
    """Raise CocoFormatError naming `source`, the record and the problem; return None if valid."""
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{source}: top level is {type(dataset).__name__}, not a JSON object")
    for key in _REQUIRED_KEYS:
        if key not in dataset:
            raise CocoFormatError(f"{source}: missing required key '{key}'")
        if not isinstance(dataset[key], list):
            raise CocoFormatError(f"{source}: '{key}' is {type(dataset[key]).__name__}, not a list")
    images = _check_records(dataset["images"], "image", source)
    categories = _check_records(dataset["categories"], "category", source)
    _check_records(dataset["annotations"], "annotation", source)
    for cat_id, cat in categories.items():
        if cat_id == 0:
            raise CocoFormatError(
                f"{source}: category id 0 ({cat.get('name')!r}) clashes with torchvision's "
                "background class; number categories from 1"
            )
    for image_id, image in images.items():
        if not isinstance(image.get("file_name"), str):
            raise CocoFormatError(f"{source}: image id {image_id} has no 'file_name' string")
        for key in ("width", "height"):
            value = image.get(key)
            if not _is_number(value) or value <= 0:
                raise CocoFormatError(
                    f"{source}: image id {image_id} ({image['file_name']}) has {key} {value!r}; "
                    "it must be a positive number"
                )
    for ann in dataset["annotations"]:
        _check_annotation(ann, images, categories, source)


def coco_index(dataset: dict) -> tuple[dict[int, dict], dict[int, list[dict]], dict[int, dict]]:
    """(images by id, annotations grouped by image id, categories by id).

    Every image id has an entry in the grouping, an empty list for an image without boxes.
    """
    images = {image["id"]: image for image in dataset["images"]}
    by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    categories = {cat["id"]: cat for cat in dataset["categories"]}
    return images, by_image, categories


def make_coco(
    images: Iterable[dict],
    annotations: Iterable[dict],
    categories: Sequence[dict | str],
    info: dict | None = None,
) -> dict:
    """Build a validated COCO dict, filling in what the caller may leave out.

    Images without an 'id' get their 1-based position; annotations without an 'id' get theirs,
    plus 'area' (w * h) and 'iscrowd' 0; categories given as names get ids 1..K in order.
    """
    image_list = [{"id": i, **image} for i, image in enumerate(images, start=1)]
    ann_list = []
    for i, ann in enumerate(annotations, start=1):
        record = {"id": i, "iscrowd": 0, **ann}
        if "area" not in record and _is_box(record.get("bbox")):
            record["area"] = float(record["bbox"][2]) * float(record["bbox"][3])
        ann_list.append(record)
    cat_list = [
        {"id": i, "name": cat, "supercategory": "object"} if isinstance(cat, str) else dict(cat)
        for i, cat in enumerate(categories, start=1)
    ]
    dataset = {
        "info": dict(info or {}),
        "images": image_list,
        "annotations": ann_list,
        "categories": cat_list,
    }
    validate_coco(dataset, "make_coco")
    return dataset


def _check_records(records: list, kind: str, source: str) -> dict[int, dict]:
    """Every record is an object with a unique integer id; return them by id."""
    by_id: dict[int, dict] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise CocoFormatError(f"{source}: {kind} record #{position} is not a JSON object")
        record_id = record.get("id")
        if not isinstance(record_id, int) or isinstance(record_id, bool):
            raise CocoFormatError(
                f"{source}: {kind} record #{position} has id {record_id!r}; it must be an integer"
            )
        if record_id in by_id:
            raise CocoFormatError(f"{source}: {kind} id {record_id} appears more than once")
        by_id[record_id] = record
    return by_id


def _check_annotation(
    ann: dict, images: dict[int, dict], categories: dict[int, dict], source: str
) -> None:
    where = f"{source}: annotation id {ann['id']}"
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    image = images.get(image_id) if isinstance(image_id, int) else None
    if image is None:
        raise CocoFormatError(f"{where} refers to image id {image_id!r}, which is absent")
    if not isinstance(category_id, int) or category_id not in categories:
        raise CocoFormatError(f"{where} refers to category id {category_id!r}, which is absent")
    box = ann.get("bbox")
    if not _is_box(box):
        raise CocoFormatError(f"{where} has bbox {box!r}; it must be 4 finite numbers [x, y, w, h]")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise CocoFormatError(f"{where} has bbox {box} with non-positive width or height")
    tol = BBOX_TOLERANCE
    if x < -tol or y < -tol or x + w > image["width"] + tol or y + h > image["height"] + tol:
        raise CocoFormatError(
            f"{where} has bbox {box} outside its image id {image['id']} "
            f"({image['width']}x{image['height']})"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_box(box: Any) -> bool:
    return isinstance(box, list | tuple) and len(box) == 4 and all(_is_number(v) for v in box)
