"""The pipeline on a user's own VGGSound-layout set (slow): not the toy layout, mixed clip formats.

The tiny toy set is re-encoded into another layout (own CSV, video and annotation folders, other
youtube ids, start times, class names and COCO ids) with clips of other frame sizes and aspect
ratios, frame rates, audio rates, channel counts and lengths, plus a truncated file and a clip
without audio, which the pipeline must skip and count:

    pytest -m slow tests/tools/test_pipeline_foreign.py
"""

from __future__ import annotations

import csv
import json
import math
import runpy
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avdet.data.av_dataset import load_rgb
from avdet.data.indexes import vggsound_file_name
from avdet.data.prepare import FAILURES, load_manifest
from avdet.data.video import read_audio, read_frame
from avdet.data.writer import write_av_clip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Format:
    """How one clip is re-encoded: frame size, frame rate, audio rate and channels, length, codec."""

    width: int
    height: int
    fps: Fraction
    sample_rate: int
    channels: int
    seconds: float
    codec: str = "libx264"

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the decoded frames: the writer pads odd sides for x264 only."""
        if self.codec != "libx264":
            return self.width, self.height
        return self.width + self.width % 2, self.height + self.height % 2


FORMATS = (
    Format(320, 180, Fraction(25), 44100, 2, 2.0),  # 16:9, cut to 2 s
    Format(160, 120, Fraction(30), 22050, 1, 5.0),  # 4:3, looped to 5 s
    Format(250, 141, Fraction(25, 2), 16000, 1, 3.0, "mpeg4"),  # odd size kept, 12.5 fps
    Format(120, 160, Fraction(30000, 1001), 44100, 1, 2.5),  # portrait, NTSC 29.97 fps
    Format(208, 117, Fraction(24), 48000, 2, 4.0),  # odd height padded by x264, 48 kHz stereo
)
# Class names with spaces and a comma (quoted in the CSV), and COCO ids that are not 1..K.
CLASSES = {"drum": ("playing drum kit", 4), "flute": ("flute, piccolo", 7), "siren": ("siren", 11)}
# Toy clips that become a broken file (kept in the CSV and in the train GT, as a user's would be).
TRUNCATED, NO_AUDIO = "toy00009", "toy00010"


def _bounce(index: np.ndarray | int, count: int) -> np.ndarray:
    """Indices folded back and forth into 0..count-1 (a ping-pong loop of a short clip)."""
    period = 2 * (count - 1)
    folded = np.mod(index, period)
    return np.where(folded < count, folded, period - folded)


def reencode(src: Path, dst: Path, image: dict, fmt: Format, audio: bool = True) -> None:
    """`src` resized, resampled in time and re-encoded to `fmt`, its middle frame kept in the middle.

    Frame j of the new clip shows the source at the time of its annotated middle frame plus
    (j - M // 2) / fps (M new frames), looped back and forth past the ends; the audio is shifted
    the same way, so the ground truth of the middle frame stays true.
    """
    with av.open(str(src)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    fps0, count = Fraction(image["fps"]), len(frames)
    assert count == image["num_frames"]
    middle0 = Fraction(count // 2) / fps0
    total = round(fmt.seconds * fmt.fps)
    times = [middle0 + (j - total // 2) / fmt.fps for j in range(total)]
    picked = _bounce(np.array([math.floor(t * fps0) for t in times]), count)
    size = (fmt.width, fmt.height)
    video = [cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA) for i in picked]
    sound = None
    if audio:
        wave = read_audio(src, fmt.sample_rate)
        shift = round((middle0 - Fraction(total // 2) / fmt.fps) * fmt.sample_rate)
        wave = wave[_bounce(shift + np.arange(round(fmt.seconds * fmt.sample_rate)), len(wave))]
        sound = np.stack([wave, 0.6 * wave]) if fmt.channels == 2 else wave
    write_av_clip(
        dst, video, sound, fps=fmt.fps, sample_rate=fmt.sample_rate, video_codec=fmt.codec
    )


def clip_name(index: int) -> str:
    """The new file name of toy clip `index`: real YouTube ids hold '-' and '_' (VGGSound has ids
    that start with '-'), other start times."""
    return vggsound_file_name(f"-q{index:02d}_X{index % 3}z-k", 7 + 13 * index)


def _scaled(box: list[float], sx: float, sy: float) -> list[float]:
    x, y, w, h = box
    return [x * sx, y * sy, w * sx, h * sy]


@dataclass
class Foreign:
    """The built set: its paths, each clip's new file name and format, the broken file names."""

    csv: Path
    video_dir: Path
    annotation_dir: Path
    formats: dict[str, Format]  # file name -> format, for the clips that should prepare
    broken: dict[str, str]  # file name -> the start of its expected failure reason
    sources: dict[str, Path]  # file name -> the toy clip it was made from


def build_foreign_set(toy_root: Path, root: Path) -> Foreign:
    """A VGGSound-layout copy of the toy set under `root` (see the module docstring)."""
    toy_gt = {
        split: json.loads((toy_root / "annotations" / f"instances_{split}.json").read_text())
        for split in ("train", "val", "test")
    }
    toy_names = {c["id"]: c["name"] for c in toy_gt["train"]["categories"]}
    rows = list(csv.reader((toy_root / "vggsound.csv").read_text().splitlines()))
    csv_path = root / "meta" / "my_clips.csv"
    video_dir, annotation_dir = root / "clips", root / "ground_truth"
    formats, broken, renamed, out_rows = {}, {}, {}, []
    for index, (toy_id, start, label, split) in enumerate(rows):
        name = clip_name(index)
        renamed[vggsound_file_name(toy_id, int(start))] = name
        youtube_id, start_seconds = name.removesuffix(".mp4").rsplit("_", 1)
        new_split = "test" if split == "test" else "train"  # no val split, like VGGSound
        out_rows.append([youtube_id, int(start_seconds), CLASSES[label][0], new_split])
    out_rows.append(["missingClip1", 30, CLASSES["drum"][0], "train"])  # never downloaded
    csv_path.parent.mkdir(parents=True)
    with open(csv_path, "w", newline="") as handle:
        csv.writer(handle).writerows(out_rows)

    categories = [{"id": cid, "name": name} for name, cid in CLASSES.values()]
    new_category = {cid: CLASSES[name][1] for cid, name in toy_names.items()}
    gt = {"train": ([], []), "test": ([], [])}
    vggss = []
    for split, data in toy_gt.items():
        anns_of: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            anns_of.setdefault(ann["image_id"], []).append(ann)
        for image in data["images"]:
            src = toy_root / "video" / image["file_name"]
            name = renamed[image["file_name"]]
            index = int(image["file_name"][3:8])
            fmt = FORMATS[index % len(FORMATS)]
            dst = video_dir / name
            reencode(src, dst, image, fmt, audio=not image["file_name"].startswith(NO_AUDIO))
            if image["file_name"].startswith(TRUNCATED):
                dst.write_bytes(dst.read_bytes()[: dst.stat().st_size // 2])
                broken[name] = "not a readable media file"
            elif image["file_name"].startswith(NO_AUDIO):
                broken[name] = "no audio stream"
            else:
                formats[name] = fmt
            width, height = fmt.frame_size
            sx, sy = fmt.width / image["width"], fmt.height / image["height"]
            image_id = 1000 + 7 * index
            images, annotations = gt["test" if split == "test" else "train"]
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for ann in anns_of.get(image["id"], []):
                box = _scaled(ann["bbox"], sx, sy)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": new_category[ann["category_id"]],
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                        "sounding": ann["sounding"],
                    }
                )
                if split == "test" and ann["sounding"]:
                    x, y, w, h = box
                    vggss.append(
                        {
                            "file": name,
                            "class": CLASSES[toy_names[ann["category_id"]]][0],
                            "bbox": [[x / width, y / height, (x + w) / width, (y + h) / height]],
                        }
                    )
    annotation_dir.mkdir(parents=True)
    for split, (images, annotations) in gt.items():
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (annotation_dir / f"instances_{split}.json").write_text(json.dumps(coco))
    (annotation_dir / "vggss_test.json").write_text(json.dumps(vggss))
    sources = {renamed[name]: toy_root / "video" / name for name in renamed}
    return Foreign(csv_path, video_dir, annotation_dir, formats, broken, sources)


TINY = [
    "DEVICE", "cpu",
    "MODEL.NUM_CLUSTERS", "3",
    "DATALOADER.NUM_WORKERS", "0",
    "DATALOADER.PREPARE_WORKERS", "1",
    "PIPELINE.LABEL_SWEEP", "(1,)",
    "PIPELINE.AV_OPTS",
    "('SOLVER.MAX_ITER', '6', 'SELFLABEL.START_ITER', '2', 'SOLVER.IMS_PER_BATCH', '8', 'TEST.NUM_VIS', '4')",
    "PIPELINE.DETECTOR_OPTS", "('SOLVER.MAX_ITER', '4', 'SOLVER.IMS_PER_BATCH', '4')",
]  # fmt: skip


@pytest.fixture(scope="module")
def foreign(toy_root, tmp_path_factory) -> Foreign:
    return build_foreign_set(toy_root, tmp_path_factory.mktemp("mydata"))


@pytest.fixture(scope="module")
def run(foreign, tmp_path_factory) -> tuple[Path, dict]:
    """OUTPUT_DIR and the summary of one pipeline run on the foreign set."""
    out = tmp_path_factory.mktemp("foreign_run") / "run"
    main = runpy.run_path(str(ROOT / "tools" / "run_pipeline.py"), run_name="not_main")["main"]
    summary = main(
        [
            "--config-file", str(ROOT / "configs" / "toy" / "pipeline.yaml"),
            "OUTPUT_DIR", str(out),
            "DATASETS.CSV", str(foreign.csv),
            "DATASETS.VIDEO_DIR", str(foreign.video_dir),
            "DATASETS.ANNOTATION_DIR", str(foreign.annotation_dir),
            *TINY,
        ]
    )  # fmt: skip
    return out, summary


def test_the_reencoded_clips_keep_their_ground_truth_frame(foreign):
    # The builder's own check: the frame the pipeline takes (the middle one) shows the annotated
    # toy frame; no other frame of the toy clip is closer to it.
    for name, fmt in foreign.formats.items():
        frame, _ = read_frame(foreign.video_dir / name)
        assert frame.shape[:2] == fmt.frame_size[::-1]
        with av.open(str(foreign.sources[name])) as container:
            toy = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        content = frame[: fmt.height, : fmt.width].astype(np.float32)
        errors = [
            np.abs(
                content - cv2.resize(f, (fmt.width, fmt.height), interpolation=cv2.INTER_AREA)
            ).mean()
            for f in toy
        ]
        assert errors[len(toy) // 2] <= min(errors) + 0.1, (name, errors)


def test_report_has_every_metric_in_range(run):
    out, summary = run
    report = json.loads((out / "report.json").read_text())
    for key in ("map50_selfsup", "map50_supervised", "map50_gt_classes", "map50_agnostic",
                "ciou50", "auc", "pointing", "nmi", "accuracy"):  # fmt: skip
        assert report[key] is not None, key
        assert 0.0 <= report[key] <= 1.0, key
    assert summary["map50_supervised"] == report["map50_supervised"]
    assert report["stages"]["av"]["num_clips"] == 3  # the test clips, all readable


def test_broken_clips_are_skipped_and_counted(run, foreign):
    out, _ = run
    prepared = out / "prepared"  # DATASETS.PREPARED_DIR follows OUTPUT_DIR off the toy set
    failures = {
        Path(row["path"]).name: row["reason"]
        for row in map(json.loads, (prepared / FAILURES).read_text().splitlines())
    }
    assert set(failures) == set(foreign.broken)
    for name, reason in foreign.broken.items():
        assert failures[name].startswith(reason), (name, failures[name])
    manifest = load_manifest(prepared)
    assert {Path(r["video"]).name for r in manifest} == set(foreign.formats)
    gt_train = json.loads((out / "gt" / "instances_train.json").read_text())
    assert not {i["file_name"] for i in gt_train["images"]} & set(foreign.broken)
    clips = json.loads((out / "report.json").read_text())["clips"]
    assert clips["prepared"] == len(foreign.formats)
    assert clips["failed"] == len(foreign.broken)
    assert clips["failed_by_reason"] == dict(Counter(foreign.broken.values()))
    line = f"Clips: {len(foreign.formats)} prepared, {len(foreign.broken)} skipped ("
    assert line in (out / "report.md").read_text()


def test_clips_are_prepared_once_per_run(run):
    # The pipeline prepares before its first stage; stage 1's own preparation does nothing.
    out, _ = run
    logs = "".join(path.read_text() for path in out.rglob("log.txt"))
    assert logs.count("prepared now:") == 1


def test_prepared_frames_have_each_clips_own_size(run, foreign):
    out, _ = run
    prepared = out / "prepared"
    for record in load_manifest(prepared):
        fmt = foreign.formats[Path(record["video"]).name]
        assert (record["width"], record["height"]) == fmt.frame_size
        assert load_rgb(prepared / record["frame"]).shape[:2] == fmt.frame_size[::-1]
        assert record["duration"] == pytest.approx(round(fmt.seconds * fmt.fps) / fmt.fps)
        assert record["sample_rate"] == 16000
        assert record["num_samples"] == pytest.approx(16000 * fmt.seconds, abs=1600)
    for split in ("train", "test"):  # the GT the detectors train and test on, on those frames
        gt = json.loads((out / "gt" / f"instances_{split}.json").read_text())
        for image in gt["images"]:
            height, width = load_rgb(prepared / image["file_name"]).shape[:2]
            assert (image["width"], image["height"]) == (width, height), image


def test_pseudo_boxes_lie_inside_their_own_frame(run, foreign):
    out, _ = run
    pseudo = json.loads((out / "pseudo" / "pseudo_train.json").read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in pseudo["images"]}
    for image in pseudo["images"]:
        assert sizes[image["id"]] == foreign.formats[image["video_file"]].frame_size
    assert len(set(sizes.values())) > 2
    assert pseudo["annotations"]
    for ann in pseudo["annotations"]:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert min(x, y) >= 0 and w > 0 and h > 0, ann
        assert x + w <= width and y + h <= height, (ann, width, height)
