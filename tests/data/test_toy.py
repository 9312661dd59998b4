"""toy-av: real decodable clips, consistent CSV and ground truth, GT boxes on the drawn objects,
determinism, an audible class signal and the scale distribution."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from avdet.config import get_cfg
from avdet.data.coco import load_coco, validate_coco
from avdet.data.toy import (
    MAX_CLASSES,
    TOY_CLASSES,
    ToyDatasetError,
    ensure_toy_dataset,
    make_toy_dataset,
    render_toy_audio,
    render_toy_video,
    sample_toy_clip,
    toy_clip_boxes,
)

K = 3  # classes in the test dataset (tiny preset: 5 clips per class, 3 train / 1 val / 1 test)
SPLITS = ("train", "val", "test")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), preset="tiny", num_classes=K, workers=1)


def read_csv(root: Path) -> list[list[str]]:
    with open(root / "vggsound.csv", newline="") as handle:
        return list(csv.reader(handle))


def all_images(root: Path) -> dict[str, tuple[dict, list[dict]]]:
    """file_name -> (COCO image, its annotations) over the three splits."""
    out = {}
    for split in SPLITS:
        dataset = load_coco(root / "annotations" / f"instances_{split}.json")
        for image in dataset["images"]:
            anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
            out[image["file_name"]] = (image, anns)
    return out


def decode_middle(path: Path, time: float | None = None) -> np.ndarray:
    """The last frame with pts <= time (default: half the video stream's duration), RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if time is None:
            time = float(stream.duration * stream.time_base) / 2
        chosen = None
        for frame in container.decode(stream):
            if frame.pts * frame.time_base <= time + 1e-9:
                chosen = frame
        return chosen.to_ndarray(format="rgb24")


def test_clips_are_real_h264_aac_mp4s_in_vggsound_layout(toy_root):
    rows = read_csv(toy_root)
    names = [f"{yid}_{int(start):06d}.mp4" for yid, start, _, _ in rows]
    assert sorted(p.name for p in (toy_root / "video").iterdir()) == sorted(names)
    assert Counter((label, split) for _, _, label, split in rows) == {
        (cls.name, split): n
        for cls in TOY_CLASSES[:K]
        for split, n in (("train", 3), ("val", 1), ("test", 1))
    }
    images = all_images(toy_root)
    for name in names:
        image, _ = images[name]
        with av.open(str(toy_root / "video" / name)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            assert (video.width, video.height) == (image["width"], image["height"])
            assert audio.rate in (16000, 22050, 44100) and audio.channels in (1, 2)
            assert sum(1 for _ in container.decode(video)) == image["num_frames"]
        assert image["frame_index"] == image["num_frames"] // 2


def test_ground_truth_files_are_consistent(toy_root):
    rows = {
        f"{yid}_{int(start):06d}.mp4": (label, split)
        for yid, start, label, split in read_csv(toy_root)
    }
    names = [cls.name for cls in TOY_CLASSES[:K]]
    seen = set()
    for split in SPLITS:
        dataset = load_coco(toy_root / "annotations" / f"instances_{split}.json")
        validate_coco(dataset, split)
        assert [(c["id"], c["name"]) for c in dataset["categories"]] == list(enumerate(names, 1))
        for image in dataset["images"]:
            label, row_split = rows[image["file_name"]]
            assert row_split == split and image["id"] not in seen
            seen.add(image["id"])
            anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
            sounding = [a for a in anns if a["sounding"] is True]
            assert len(sounding) == 1 and names[sounding[0]["category_id"] - 1] == label
            assert all(
                a["category_id"] != sounding[0]["category_id"] for a in anns if not a["sounding"]
            )
        if split == "train":
            assert not (toy_root / "annotations" / "vggss_train.json").exists()
            continue
        vggss = json.loads((toy_root / "annotations" / f"vggss_{split}.json").read_text())
        images = {im["file_name"]: im for im in dataset["images"]}
        assert sorted(e["file"] for e in vggss) == sorted(images)
        for entry in vggss:
            image = images[entry["file"]]
            (ann,) = [
                a for a in dataset["annotations"] if a["image_id"] == image["id"] and a["sounding"]
            ]
            x, y, w, h = ann["bbox"]
            W, H = image["width"], image["height"]
            assert entry["class"] == rows[entry["file"]][0]
            np.testing.assert_allclose(entry["bbox"], [[x / W, y / H, (x + w) / W, (y + h) / H]])
    assert len(seen) == K * 5


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(float) @ [0.299, 0.587, 0.114]


def test_gt_boxes_are_where_the_objects_are_in_the_decoded_middle_frame(toy_root):
    images = all_images(toy_root)
    for index in range(K * 5):
        clip = sample_toy_clip(0, index, K)
        _, anns = images[clip.file_name]
        assert [a["bbox"] for a in anns] == toy_clip_boxes(clip)
        full = render_toy_video(clip)[clip.middle_frame].astype(int)
        empty = render_toy_video(dataclasses.replace(clip, objects=()))[clip.middle_frame]
        drawn = np.abs(full - empty).max(-1) > 30  # pixels where an object is drawn
        path = toy_root / "video" / clip.file_name
        with av.open(str(path)) as container:
            late = container.duration / 1e6 / 2  # AAC padding makes this later than the video's
        for frame in (decode_middle(path), decode_middle(path, late)):
            frame = frame.astype(int)
            near = np.zeros(drawn.shape, bool)  # the boxes plus 2 pixels (anti-aliasing, codec)
            for ann in anns:
                x, y, w, h = map(int, ann["bbox"])
                near[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = True
                obj = np.zeros_like(drawn)
                obj[y : y + h, x : x + w] = drawn[y : y + h, x : x + w]
                rows, cols = np.nonzero(obj[y : y + h, x : x + w])
                assert rows.min() <= 1 and cols.min() <= 1  # the box is tight on the object
                assert rows.max() >= h - 2 and cols.max() >= w - 2
                # The decoded frame shows the object there: close to it, far from the background.
                error_object = np.abs(frame - full)[obj].mean()
                error_background = np.abs(frame - empty)[obj].mean()
                assert error_object < 0.25 * error_background, (clip.file_name, ann)
            # Nothing else changed: outside the boxes the frame is the empty scene.
            assert (np.abs(luma(frame) - luma(empty)) > 25)[~near].mean() < 0.002


def test_same_seed_same_dataset_any_workers_other_seed_differs(toy_root, tmp_path):
    again = make_toy_dataset(tmp_path / "again", preset="tiny", num_classes=K, workers=2)
    for name in ["vggsound.csv"] + [f"annotations/instances_{s}.json" for s in SPLITS]:
        assert (again / name).read_bytes() == (toy_root / name).read_bytes()
    for yid, start, _, _ in read_csv(toy_root):  # every clip, to the byte
        name = f"video/{yid}_{int(start):06d}.mp4"
        assert (again / name).read_bytes() == (toy_root / name).read_bytes(), name
    # Another seed draws other scenes, boxes and formats for the same clip indexes.
    for index in range(4):
        a, b = sample_toy_clip(0, index, K), sample_toy_clip(1, index, K)
        assert toy_clip_boxes(a) != toy_clip_boxes(b)
        frame_a = render_toy_video(a)[a.middle_frame].astype(int)
        frame_b = render_toy_video(b)[b.middle_frame]
        assert frame_a.shape != frame_b.shape or np.abs(frame_a - frame_b).mean() > 10


def test_rerun_is_a_no_op_resumes_and_refuses_other_parameters(toy_root, tmp_path):
    mtimes = {p: p.stat().st_mtime_ns for p in toy_root.rglob("*") if p.is_file()}
    assert make_toy_dataset(toy_root, preset="tiny", num_classes=K, workers=1) == toy_root
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TOY.ROOT", str(toy_root), "DATASETS.TOY.PRESET", "tiny"])
    cfg.merge_from_list(["DATASETS.TOY.NUM_CLASSES", K, "DATALOADER.PREPARE_WORKERS", 1])
    assert ensure_toy_dataset(cfg) == toy_root
    assert {p: p.stat().st_mtime_ns for p in toy_root.rglob("*") if p.is_file()} == mtimes
    with pytest.raises(ToyDatasetError, match="delete it or choose another"):
        make_toy_dataset(toy_root, preset="tiny", num_classes=K, seed=5)

    # A run killed after some clips (no meta file yet, a temp file left) resumes.
    root = make_toy_dataset(tmp_path / "resume", preset="tiny", num_classes=2, workers=1)
    videos = sorted((root / "video").glob("*.mp4"))
    kept, lost = videos[0], videos[1]
    kept_time, lost_frame = kept.stat().st_mtime_ns, decode_middle(lost).astype(int)
    (root / "toy_meta.json").unlink()
    lost.unlink()
    (root / "video" / f".{lost.stem}.123.tmp.mp4").write_bytes(b"partial")
    make_toy_dataset(root, preset="tiny", num_classes=2, workers=1)
    assert kept.stat().st_mtime_ns == kept_time
    assert np.abs(decode_middle(lost) - lost_frame).mean() < 1.5
    assert not list((root / "video").glob(".*")) and (root / "toy_meta.json").exists()


def test_cli_makes_the_dataset(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_toy", REPO / "datasets" / "make_toy.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "cli"
    cli.main(["--output", str(out), "--preset", "tiny", "--num-classes", "1", "--workers", "1"])
    assert "5 clips" in capsys.readouterr().out
    assert json.loads((out / "toy_meta.json").read_text())["classes"] == [TOY_CLASSES[0].name]
    with pytest.raises(SystemExit, match="1..16 classes"):
        cli.main(["--output", str(tmp_path / "x"), "--num-classes", "17"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="1..16"):
        sample_toy_clip(0, 0, MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="unknown toy-av preset 'huge'"):
        make_toy_dataset("/nonexistent", preset="huge")


def test_audio_carries_the_class(toy_root):
    """The written audio is the rendered sound, and class-mean spectra tell the classes apart."""
    clip = sample_toy_clip(0, 4, K)
    rendered = render_toy_audio(clip)
    with av.open(str(toy_root / "video" / clip.file_name)) as container:
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], 1)
    assert decoded.shape[0] == rendered.shape[0] == clip.channels
    n = rendered.shape[1] - 4096
    lag = max(range(2048), key=lambda k: float(decoded[0, k : k + n] @ rendered[0, :n]))
    assert np.corrcoef(decoded[0, lag : lag + n], rendered[0, :n])[0, 1] > 0.95

    # Leave-one-out nearest class mean of band-energy statistics over 8 classes x 6 clips.
    clips = [sample_toy_clip(7, i, 8) for i in range(48)]
    feats = np.stack([band_profile(c) for c in clips])
    labels = np.array([c.label for c in clips])
    hits = 0
    for i in range(len(clips)):
        keep = np.arange(len(clips)) != i
        means = [feats[keep & (labels == k)].mean(0) for k in range(8)]
        hits += int(np.argmin([np.linalg.norm(feats[i] - m) for m in means]) == labels[i])
    assert hits / len(clips) > 0.4  # chance: 1/8; 5 training clips per class, wide variation
    # Engine (30-85 Hz buzz) sits lower than bird (2.5-4.5 kHz chirps), whatever the noise.
    engine, bird = (
        [spectral_centroid(c) for c in clips if TOY_CLASSES[c.label].name == name]
        for name in ("engine", "bird")
    )
    assert max(engine) < min(bird)


def band_profile(clip) -> np.ndarray:
    """Mean and spread over time of log power in 24 log-spaced bands, 60 Hz-7 kHz [48]."""
    audio = render_toy_audio(clip).mean(0)
    hop = clip.sample_rate // 20  # 50 ms frames
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop) * np.hanning(hop)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(hop, 1 / clip.sample_rate)
    edges = np.geomspace(60, 7000, 25)
    bands = np.stack(
        [
            power[:, (freqs >= lo) & (freqs < hi)].mean(1)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ],
        1,
    )
    logs = np.log(bands + 1e-10)
    logs -= logs.mean()
    return np.concatenate([logs.mean(0), logs.std(0)])


def spectral_centroid(clip) -> float:
    """Power-weighted mean frequency below 8 kHz of a clip's rendered sound."""
    audio = render_toy_audio(clip).mean(0)
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / clip.sample_rate)
    band = freqs < 8000
    return float((freqs[band] * power[band]).sum() / power[band].sum())


def test_scale_and_distractor_distribution():
    clips = [sample_toy_clip(0, i, 8) for i in range(400)]
    large, distractors = 0, 0
    for clip in clips:
        boxes = toy_clip_boxes(clip)
        for x, y, w, h in boxes:
            assert x >= 0 and y >= 0 and x + w <= clip.width and y + h <= clip.height
        x, y, w, h = boxes[0]
        area = w * h / (clip.width * clip.height)
        assert clip.objects[0].sounding and clip.objects[0].category == clip.label
        assert area > 0.005
        large += area >= 0.25
        distractors += len(clip.objects) > 1
        for obj, (dx, dy, dw, dh) in zip(clip.objects[1:], boxes[1:], strict=True):
            assert not obj.sounding and obj.category != clip.label
            assert dx >= x + w or x >= dx + dw or dy >= y + h or y >= dy + dh  # no occlusion
    assert 0.4 < large / len(clips) < 0.6
    assert 0.25 < distractors / len(clips) < 0.5
    assert {c.sample_rate for c in clips} == {16000, 22050, 44100}
    assert {c.channels for c in clips} == {1, 2}
    assert len({c.fps for c in clips}) > 3 and len({(c.width, c.height) for c in clips}) > 2
