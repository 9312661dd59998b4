"""Any COCO detection JSON plus an image folder as a torchvision detection dataset.

The detector's labels are contiguous, 1..C in the order of the JSON's category ids (0 is
torchvision's background); `CategoryMap` converts both ways so inference writes the JSON's own
category ids. Images without boxes (frames where the heatmap gave no pseudo-box) are kept as
negatives by default: torchvision's Faster R-CNN trains on them with background-only targets.
Scale jitter is not done here: the detector's transform draws a random shorter side from
INPUT.MIN_SIZE_TRAIN for every image, so the dataset only adds the horizontal flip.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from avdet.data.av_dataset import load_rgb
from avdet.data.coco import CocoFormatError, coco_index, load_coco

logger = logging.getLogger(__name__)


class CategoryMap:
    """COCO category ids <-> contiguous detector labels 1..C (sorted by category id)."""

    def __init__(self, categories: Sequence[dict]) -> None:
        ordered = sorted(categories, key=lambda cat: cat["id"])
        self.category_ids: list[int] = [cat["id"] for cat in ordered]
        self.names: list[str] = [str(cat.get("name", cat["id"])) for cat in ordered]
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids, start=1)}

    def __len__(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        """The detector label (1..C) of a COCO category id."""
        return self._label_of[category_id]

    def category_id(self, label: int) -> int:
        """The COCO category id of a detector label (1..C); 0 (background) is an error."""
        if not 1 <= label <= len(self.category_ids):
            raise ValueError(f"label {label} is outside 1..{len(self.category_ids)}")
        return self.category_ids[label - 1]


def default_image_dir(json_path: str | os.PathLike, image_dir: str | os.PathLike = "") -> Path:
    """`image_dir`, or the JSON's own folder when it is empty (file_names relative to the JSON)."""
    return Path(image_dir) if str(image_dir) else Path(json_path).resolve().parent


class CocoDetectionDataset(Dataset):
    """Images of a COCO JSON; item: (image [3, H, W] float in 0..1, target dict).

    target: `boxes` [N, 4] float32 xyxy pixels, `labels` [N] int64 in 1..C, `image_id` int (the
    JSON's id). N may be 0 (a negative image). `train=True` flips horizontally with probability
    `flip_prob`. Crowd annotations (`iscrowd` 1) are not training targets; evaluation sees them.
    The JSON is validated first and every image file must exist (checked up front, so a missing
    file fails at start-up, not hours into training).
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike = "",
        train: bool = False,
        keep_negatives: bool = True,
        flip_prob: float = 0.5,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_dir = default_image_dir(json_path, image_dir)
        self.train = train
        self.flip_prob = flip_prob
        self.coco = load_coco(self.json_path)
        images, by_image, categories = coco_index(self.coco)
        self.categories = CategoryMap(list(categories.values()))
        self._boxes = {
            image_id: [ann for ann in anns if not ann.get("iscrowd", 0)]
            for image_id, anns in by_image.items()
        }
        ordered = [images[image_id] for image_id in sorted(images)]
        negatives = [image for image in ordered if not self._boxes[image["id"]]]
        self.num_negatives = len(negatives) if keep_negatives else 0
        self.num_dropped = 0 if keep_negatives else len(negatives)
        self.images = ordered if keep_negatives else [i for i in ordered if self._boxes[i["id"]]]
        if not self.images:
            raise CocoFormatError(
                f"{self.json_path}: no images to use (all {len(ordered)} dropped)"
            )
        self._check_files()
        logger.info(
            "%s: %d images (%d negatives without boxes%s), %d categories",
            self.json_path,
            len(self.images),
            len(negatives),
            "" if keep_negatives else ", dropped",
            len(self.categories),
        )

    def _check_files(self) -> None:
        missing = [img["file_name"] for img in self.images if not self.image_path(img).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.json_path}: {len(missing)} image files not found under {self.image_dir}, "
                f"e.g. {self.image_dir / missing[0]} (file_names: {missing[:5]})"
            )

    def image_path(self, image: dict) -> Path:
        return self.image_dir / image["file_name"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        info = self.images[index]
        path = self.image_path(info)
        rgb = load_rgb(path)
        height, width = rgb.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            raise CocoFormatError(
                f"{path}: image is {width}x{height} but {self.json_path} says image id "
                f"{info['id']} is {info['width']}x{info['height']}"
            )
        anns = self._boxes[info["id"]]
        boxes = torch.tensor([ann["bbox"] for ann in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = torch.tensor(
            [self.categories.label(ann["category_id"]) for ann in anns], dtype=torch.int64
        )
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        if self.train and random.random() < self.flip_prob:
            image, boxes = hflip(image, boxes)
        return image, {"boxes": boxes, "labels": labels, "image_id": info["id"]}


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror image [3, H, W] left-right and its xyxy boxes [N, 4] with it."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def collate_fn(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of different sizes stay a list (torchvision batches them after resizing)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
