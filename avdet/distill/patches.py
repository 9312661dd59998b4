"""Patch sets from one image: the augmentation pipeline of "the augmented image prior".

From one source image, every patch is: a random crop of about half the image (so patches do not
all centre on the middle), a RandomResizedCrop over scales 1/500..1 to ~sqrt(2) x the patch size
(bicubic), a random rotation (+-30 deg) and shear (30 deg), a centre crop to the patch size (the
sqrt(2) margin hides the black corners the rotation leaves), colour jitter (0.4, 0.4, 0.4, 0.1)
with p=0.5 and a horizontal flip (Asano & Saeed, ICLR 2023, and their public code).

Patch `i` of a set depends on (seed, i) only, so the on-the-fly `PatchDataset` (the default for
training) and a set written once by `write_patch_set` hold the same patches for the same seed,
in any worker and any order.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from avdet.data.av_dataset import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from avdet.utils.io import atomic_write_json
from avdet.utils.seed import derive_seed, seeded_rng
from avdet.utils.visualize import image_grid, save_png

logger = logging.getLogger(__name__)

# First key of every patch seed, so patch seeds do not collide with other uses of derive_seed.
_PATCH_SEED_KEY = 0x5EED_0A1
INDEX_FILE = "index.json"
CONTACT_SHEET = "contact_sheet.png"
PATCH_FORMATS = ("png", "jpg")
# "package:relative/path": a file shipped inside an installed Python package.
_PACKAGE_SPEC = re.compile(r"^([A-Za-z_][\w.]*):(?!//)(.+)$")


class SourceImageError(ValueError):
    """The source image cannot be used (missing, unreadable, too small); names the file."""


def resolve_image_path(spec: str | os.PathLike) -> Path:
    """A file path, or `package:path/in/package` (e.g. `skimage:data/astronaut.png`): the file an
    installed package ships, found without importing the package, so configs can name a bundled
    sample photograph portably."""
    text = str(spec)
    if not text:
        raise SourceImageError("no source image given (DISTILL.SOURCE_IMAGE is empty)")
    path = Path(text).expanduser()
    match = _PACKAGE_SPEC.match(text)
    if path.exists() or match is None:
        return path
    package, resource = match.groups()
    try:
        spec_found = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec_found = None
    if spec_found is None or not spec_found.submodule_search_locations:
        raise SourceImageError(
            f"{text}: package {package!r} is not installed (install it, or give an image path)"
        )
    resolved = Path(next(iter(spec_found.submodule_search_locations))) / resource
    if not resolved.is_file():
        raise SourceImageError(f"{text}: package {package!r} has no file {resource!r}")
    return resolved


def load_source_image(spec: str | os.PathLike, min_size: int) -> torch.Tensor:
    """The source image as uint8 [3, H, W]; SourceImageError if it is unreadable or smaller
    than `min_size` (the patch size) on either side."""
    path = resolve_image_path(spec)
    if not path.is_file():
        raise SourceImageError(f"{path}: source image not found")
    try:
        rgb = load_rgb(path)
    except OSError as exc:
        raise SourceImageError(f"{path}: cannot read the source image ({exc})") from exc
    height, width = rgb.shape[:2]
    if min(height, width) < min_size:
        raise SourceImageError(
            f"{path}: image is {width}x{height} pixels, smaller than the {min_size}x{min_size} "
            "patch size; use a larger image or a smaller DISTILL.PATCH_SIZE"
        )
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def build_patch_transform(
    image_size: tuple[int, int], patch_size: int, init_crop: float = 0.5
) -> v2.Compose:
    """The pipeline uint8 [3, H, W] source -> uint8 [3, patch_size, patch_size] patch.

    `init_crop` is the side of the first random crop relative to the shorter image side (never
    below the patch size); RandomResizedCrop then takes 1/500 to all of that crop's area.
    """
    init_side = min(max(int(init_crop * min(image_size)), patch_size), min(image_size))
    return v2.Compose(
        [
            v2.RandomCrop(init_side),
            v2.RandomResizedCrop(
                int(math.sqrt(2) * patch_size),
                scale=(1 / 500, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomAffine(degrees=30, shear=30, interpolation=v2.InterpolationMode.BILINEAR),
            v2.CenterCrop(patch_size),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.5),
            v2.RandomHorizontalFlip(),
        ]
    )


def normalize(patches: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float normalised with ImageNet statistics (as the AV frames)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (patches.float() / 255.0 - mean) / std


class PatchGenerator:
    """Patch `index` of the set made from `image` with `seed`: uint8 [3, size, size]."""

    def __init__(self, image: torch.Tensor, patch_size: int, seed: int) -> None:
        self.image = image
        self.patch_size = patch_size
        self.seed = seed
        self.transform = build_patch_transform(tuple(image.shape[-2:]), patch_size)

    def __call__(self, index: int) -> torch.Tensor:
        with seeded_rng(derive_seed(_PATCH_SEED_KEY, self.seed, index)):
            return self.transform(self.image)


class PatchDataset(Dataset):
    """`num_patches` augmented patches of one image, made on the fly; item: float [3, S, S]
    normalised (ImageNet statistics). `source` is an image path (or `package:path`), or a
    folder written by `write_patch_set` (its files are read instead)."""

    def __init__(self, source: str | os.PathLike, num_patches: int, size: int, seed: int) -> None:
        if num_patches <= 0:
            raise ValueError(f"num_patches must be positive, got {num_patches}")
        folder = Path(source)
        self.files: list[Path] = []
        if (folder / INDEX_FILE).is_file():
            self.files = _read_patch_index(folder, size)
            if len(self.files) < num_patches:
                logger.warning(
                    "%s holds %d patches, fewer than the %d asked for; using them all",
                    folder,
                    len(self.files),
                    num_patches,
                )
            self.files = self.files[:num_patches]
            self.generator = None
        else:
            self.generator = PatchGenerator(load_source_image(source, size), size, seed)
        self.num_patches = len(self.files) or num_patches

    def __len__(self) -> int:
        return self.num_patches

    def raw(self, index: int) -> torch.Tensor:
        """Patch `index` as uint8 [3, S, S]."""
        if self.generator is None:
            return torch.from_numpy(load_rgb(self.files[index])).permute(2, 0, 1)
        return self.generator(index)

    def __getitem__(self, index: int) -> torch.Tensor:
        return normalize(self.raw(index))


def _read_patch_index(folder: Path, size: int) -> list[Path]:
    index = json.loads((folder / INDEX_FILE).read_text())
    if index.get("size") != size:
        raise SourceImageError(
            f"{folder / INDEX_FILE}: patches are {index.get('size')} px, the run wants {size} px"
        )
    return [folder / name for name in index["files"]]


def write_patch_set(
    image_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_patches: int,
    size: int,
    seed: int = 0,
    image_format: str = "png",
    sheet_patches: int = 64,
) -> Path:
    """Write patches 0..num_patches-1 as image files, `index.json` and `contact_sheet.png`.

    Layout: `patches/000000.png`, ...; the index records the source, size, seed, the pipeline
    and the file names (relative to `output_dir`). Returns the index path.
    """
    if image_format not in PATCH_FORMATS:
        raise ValueError(f"image_format must be one of {PATCH_FORMATS}, got {image_format!r}")
    if num_patches <= 0:
        raise ValueError(f"num_patches must be positive, got {num_patches}")
    source = resolve_image_path(image_path)
    image = load_source_image(source, size)
    generator = PatchGenerator(image, size, seed)
    output_dir = Path(output_dir)
    (output_dir / "patches").mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(num_patches - 1)))
    files, sheet = [], []
    for index in tqdm(range(num_patches), desc="patches", unit="patch"):
        patch = generator(index)
        rgb = patch.permute(1, 2, 0).numpy()
        name = f"patches/{index:0{width}d}.{image_format}"
        # Plain writes (no fsync per patch); the index, written last and atomically, marks a
        # complete set.
        (output_dir / name).write_bytes(_encode(rgb, image_format, name))
        files.append(name)
        if index < sheet_patches:
            sheet.append(patch)
    save_contact_sheet(output_dir / CONTACT_SHEET, sheet)
    index_path = output_dir / INDEX_FILE
    atomic_write_json(
        index_path,
        {
            "source": str(source),
            "source_size": list(image.shape[-2:]),
            "size": size,
            "seed": seed,
            "num_patches": num_patches,
            "pipeline": repr(generator.transform),
            "files": files,
        },
        indent=1,
    )
    logger.info("wrote %d patches of %d px from %s to %s", num_patches, size, source, output_dir)
    return index_path


def save_contact_sheet(path: str | os.PathLike, patches: list[torch.Tensor]) -> None:
    """A square-ish grid PNG of uint8 [3, S, S] patches (tiles of at least 48 px, to be seen)."""
    tiles = [patch.permute(1, 2, 0).numpy() for patch in patches]
    tile = max(tiles[0].shape[0], 48)
    save_png(path, image_grid(tiles, math.ceil(math.sqrt(len(tiles))), (tile, tile), pad=2))


def _encode(rgb: np.ndarray, image_format: str, name: str) -> bytes:
    ok, buffer = cv2.imencode(f".{image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{name}: {image_format} encoding failed")
    return buffer.tobytes()
