"""Labelled classification sets for teachers and evaluation: object crops of the toy set (default),
or a local labelled folder (ImageFolder layout, or CIFAR's python pickles; never downloaded).

The toy task: every ground-truth box of a split's COCO file (`instances_<split>.json`, the middle
frame of each clip) is cut from the prepared frame `frames/<clip_id>.jpg` as a square around the
box with some context, resized to the patch size; its label is the category's index (categories
sorted by id, so ids 1..K -> labels 0..K-1). Items are (image float [3, S, S] normalised with
ImageNet statistics, label int), the inputs the distillation patches also get.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from avdet.data.av_dataset import load_rgb
from avdet.data.coco import coco_index, load_coco
from avdet.data.prepare import load_manifest
from avdet.distill.patches import normalize

logger = logging.getLogger(__name__)

# Folder names of CIFAR's python version inside a root folder, and their torchvision class.
_CIFAR_FOLDERS = {
    "cifar-10-batches-py": torchvision.datasets.CIFAR10,
    "cifar-100-python": torchvision.datasets.CIFAR100,
}


def crop_square(
    rgb: np.ndarray, box_xywh: tuple[float, ...], size: int, context: float
) -> np.ndarray:
    """A square of side max(w, h) * (1 + context) centred on the box, resized to size x size.

    Parts outside the frame are filled by replicating its border. rgb: uint8 [H, W, 3].
    """
    x, y, w, h = box_xywh
    side = max(w, h) * (1.0 + context)
    cx, cy = x + w / 2, y + h / 2
    # Affine map from the square's corner to (0, 0) with scale size / side.
    scale = size / side
    matrix = np.array(
        [[scale, 0.0, (side / 2 - cx) * scale], [0.0, scale, (side / 2 - cy) * scale]],
        dtype=np.float64,
    )
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
    )


class ObjectCropDataset(Dataset):
    """Crops of every box of a COCO split from prepared frames; item (image [3, S, S], label).

    All crops are cut once and kept as uint8 [N, 3, S, S] (the toy set is small). `train=True`
    adds teacher-training augmentation: random resized crop (scale 0.5..1), flip, colour jitter.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        prepared_dir: str | os.PathLike,
        size: int,
        train: bool = False,
        context: float = 0.2,
        min_box_size: float = 2.0,
    ) -> None:
        annotation_file, prepared_dir = Path(annotation_file), Path(prepared_dir)
        images, by_image, categories = coco_index(load_coco(annotation_file))
        self.category_ids = sorted(categories)
        self.class_names = [categories[c]["name"] for c in self.category_ids]
        label_of = {cat_id: i for i, cat_id in enumerate(self.category_ids)}
        frames = {entry["clip_id"]: entry["frame"] for entry in load_manifest(prepared_dir)}
        crops, labels, unprepared = [], [], 0
        for image_id, image in tqdm(images.items(), desc="object crops", unit="image"):
            frame = frames.get(Path(image["file_name"]).stem)
            if frame is None:
                unprepared += 1
                continue
            rgb = load_rgb(prepared_dir / frame)
            sy, sx = rgb.shape[0] / image["height"], rgb.shape[1] / image["width"]
            for ann in by_image[image_id]:
                x, y, w, h = ann["bbox"]
                if min(w, h) < min_box_size:
                    continue
                box = (x * sx, y * sy, w * sx, h * sy)
                crops.append(crop_square(rgb, box, size, context))
                labels.append(label_of[ann["category_id"]])
        if unprepared:
            logger.warning(
                "%s: %d of %d images have no prepared frame in %s; their boxes are left out",
                annotation_file,
                unprepared,
                len(images),
                prepared_dir,
            )
        if not crops:
            raise ValueError(
                f"{annotation_file}: no object crops (no boxes of at least {min_box_size} px with "
                f"a prepared frame in {prepared_dir})"
            )
        self.crops = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.augment = (
            v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5),
                ]
            )
            if train
            else None
        )
        logger.info(
            "%s: %d crops of %d classes (%s)",
            annotation_file.name,
            len(labels),
            len(self.class_names),
            ", ".join(
                f"{n}: {int((self.labels == i).sum())}" for i, n in enumerate(self.class_names)
            ),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        crop = self.crops[index]
        if self.augment is not None:
            crop = self.augment(crop)
        return normalize(crop), int(self.labels[index])


def labelled_folder(root: str | os.PathLike, size: int, train: bool = False) -> Dataset:
    """A local labelled set: CIFAR-10/100 pickles (`cifar-10-batches-py/` or `cifar-100-python/`
    inside `root`; the test split unless `train`), else an ImageFolder (`root/<class>/<image>`,
    classes sorted by name). Items (image float [3, size, size] normalised, label)."""
    root = Path(root)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.uint8, scale=True),
            normalize,
        ]
    )
    for folder, cifar in _CIFAR_FOLDERS.items():
        if (root / folder).is_dir():
            return cifar(str(root), train=train, transform=transform, download=False)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: labelled image folder not found")
    try:
        return torchvision.datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(
            f"{root}: not a labelled folder (CIFAR pickles or <class>/<image> files): {exc}"
        ) from exc
