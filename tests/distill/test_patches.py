"""Patch sets from one image: deterministic per seed, the asked size and count, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avdet.distill.patches import (
    CONTACT_SHEET,
    INDEX_FILE,
    PatchDataset,
    PatchGenerator,
    SourceImageError,
    load_source_image,
    normalize,
    resolve_image_path,
    write_patch_set,
)

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_patches.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("make_patches", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene(height: int = 96, width: int = 128) -> np.ndarray:
    """An RGB uint8 picture with structure at several scales: gradient, shapes, stripes."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    cv2.circle(rgb, (width // 3, height // 2), height // 4, (230, 30, 40), -1)
    cv2.rectangle(rgb, (width // 2, 10), (width - 10, height // 2), (20, 200, 60), -1)
    rgb[height - 20 :, ::4] = 255
    return rgb


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene(), cv2.COLOR_RGB2BGR))
    return path


def test_patches_are_deterministic_per_seed_and_index(image_path):
    image = load_source_image(image_path, 16)
    a, b = PatchGenerator(image, 16, seed=3), PatchGenerator(image, 16, seed=3)
    other = PatchGenerator(image, 16, seed=4)
    assert torch.equal(a(7), b(7))
    # Order does not matter: patch 7 is the same after drawing others first.
    b(2), b(11)
    assert torch.equal(a(7), b(7))
    assert not torch.equal(a(7), a(8))
    assert not torch.equal(a(7), other(7))
    # The global RNG is left alone.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    a(1)
    assert torch.equal(torch.rand(3), expected)


def test_dataset_has_requested_count_size_and_normalisation(image_path):
    dataset = PatchDataset(image_path, num_patches=37, size=24, seed=0)
    assert len(dataset) == 37
    patch = dataset[36]
    assert patch.shape == (3, 24, 24) and patch.dtype == torch.float32
    raw = dataset.raw(36)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 24, 24)
    torch.testing.assert_close(patch, normalize(raw))
    # Heavy augmentation: the patches differ from each other and are not all one colour.
    stack = torch.stack([dataset.raw(i) for i in range(37)]).float()
    assert stack.std(dim=0).mean() > 10
    assert (stack.flatten(1).std(dim=1) > 1).sum() > 30


def test_write_patch_set_files_index_sheet_and_reading_back(image_path, tmp_path):
    out = tmp_path / "set"
    index_path = write_patch_set(image_path, out, num_patches=20, size=16, seed=5)
    index = json.loads(index_path.read_text())
    assert index_path == out / INDEX_FILE
    assert index["num_patches"] == 20 and index["size"] == 16 and index["seed"] == 5
    assert index["source_size"] == [96, 128]
    assert "RandomResizedCrop" in index["pipeline"] and "RandomAffine" in index["pipeline"]
    assert len(index["files"]) == 20
    for name in index["files"]:
        image = cv2.imread(str(out / name))
        assert image.shape == (16, 16, 3)
    sheet = cv2.imread(str(out / CONTACT_SHEET))
    assert sheet is not None and sheet.shape[0] > 48 * 4
    # PNG is lossless: the written set is the on-the-fly set of the same seed.
    from_files = PatchDataset(out, num_patches=20, size=16, seed=0)
    on_the_fly = PatchDataset(image_path, num_patches=20, size=16, seed=5)
    for i in (0, 9, 19):
        assert torch.equal(from_files.raw(i), on_the_fly.raw(i))
    with pytest.raises(SourceImageError, match="16 px, the run wants 32 px"):
        PatchDataset(out, num_patches=20, size=32, seed=0)


def test_unreadable_missing_and_too_small_images_name_the_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(SourceImageError, match=r"junk\.png: cannot read the source image"):
        PatchDataset(junk, 10, 32, 0)
    with pytest.raises(SourceImageError, match=r"missing\.jpg: source image not found"):
        load_source_image(tmp_path / "missing.jpg", 32)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 40, 3), np.uint8))
    with pytest.raises(
        SourceImageError, match=r"small\.png: image is 40x20 pixels, smaller than the 32x32"
    ):
        write_patch_set(small, tmp_path / "out", 4, 32)
    with pytest.raises(SourceImageError, match="DISTILL.SOURCE_IMAGE is empty"):
        resolve_image_path("")


def test_package_resources_resolve_without_importing(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fakepkg"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    cv2.imwrite(str(package / "data" / "photo.png"), scene())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_image_path("fakepkg:data/photo.png") == package / "data" / "photo.png"
    assert load_source_image("fakepkg:data/photo.png", 32).shape == (3, 96, 128)
    with pytest.raises(SourceImageError, match="has no file 'data/none.png'"):
        resolve_image_path("fakepkg:data/none.png")
    with pytest.raises(SourceImageError, match="package 'nosuchpkg_xyz' is not installed"):
        resolve_image_path("nosuchpkg_xyz:data/photo.png")


def test_make_patches_cli(image_path, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--image", str(image_path), "--output", str(out), "--num-patches", "6", "--size", "16"]
    # As a user runs it: a separate process.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(TOOL), *args, "--seed", "2"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env=env, timeout=120)
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(index["files"]) == 6 and index["seed"] == 2
    args[1] = str(tmp_path / "nope.png")
    assert load_tool().main(args) == 2
    assert "nope.png: source image not found" in capsys.readouterr().err
