"""Decoding real mp4 files: which frame is "the middle", audio resampling/downmix, bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avdet.data.video import ClipReadError, crop_or_pad, read_audio, read_clip, read_frame

# write_av_clip's AAC keeps the encoder's 1024 priming samples and pads the last frame, so the
# decoded audio can run up to two AAC frames past the clip.
AAC_SLACK_FRAMES = 2048


@pytest.mark.parametrize("n_frames", [24, 25])
def test_middle_frame_is_frame_n_over_2(make_clip, av_helpers, n_frames):
    path = make_clip(f"n{n_frames}.mp4", n_frames=n_frames, fps=25)
    frame, time = read_frame(path)
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert av_helpers.frame_index(frame) == n_frames // 2
    assert time == pytest.approx((n_frames // 2) / 25)
    clip = read_clip(path)
    assert (clip.start, clip.duration) == (0.0, n_frames / 25)
    np.testing.assert_allclose(
        frame.reshape(-1, 3).mean(0), av_helpers.frame_colour(n_frames // 2), atol=3
    )


@pytest.mark.parametrize("time", [0.0, 0.3, 0.32, 0.9999, 0.96])
def test_frame_at_time_is_the_one_on_screen(make_clip, av_helpers, time):
    path = make_clip("a.mp4", n_frames=25, fps=25)
    frame, actual = read_frame(path, time)
    expected = int(time * 25 + 1e-9)
    assert av_helpers.frame_index(frame) == expected
    assert actual == pytest.approx(expected / 25)


def test_middle_frame_without_stream_duration_mkv(make_clip, av_helpers):
    path = make_clip("a.mkv", n_frames=21, fps=25)
    with av.open(str(path)) as container:
        assert not container.streams.video[0].duration  # Matroska: found by the packet scan
    frame, time = read_frame(path)
    assert av_helpers.frame_index(frame) == 10
    assert time == pytest.approx(10 / 25, abs=1e-3)


def test_variable_frame_rate(make_clip, av_helpers):
    times = [0.0, 0.1, 0.15, 0.5, 0.9, 1.0, 1.7]
    path = make_clip("vfr.mp4", n_frames=len(times), frame_times=times, seconds=2.0)
    # The mp4 header of this B-frame VFR stream only spans the decode order (~1.09 s); the
    # duration must cover the last frame, and the middle frame is the one shown at duration / 2.
    clip = read_clip(path)
    assert clip.start == 0.0 and clip.duration > 1.7
    expected = max(i for i, t in enumerate(times) if t <= clip.duration / 2)
    assert av_helpers.frame_index(clip.frame) == expected
    for query, index in [(0.12, 1), (0.6, 3), (0.99, 4), (1.69, 5), (1.71, 6)]:
        frame, actual = read_frame(path, query)
        assert av_helpers.frame_index(frame) == index, query
        assert actual == pytest.approx(times[index], abs=1e-3)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_middle_frame_of_a_video_stream_that_starts_late(make_clip, av_helpers, suffix):
    # Video from 1.0 s to 2.0 s (25 frames at 25 fps), audio from 0 to 2.5 s: the middle of the
    # video's span is 1.5 s (frame 12), not half its end time (1.0 s, frame 0).
    times = [1.0 + i / 25 for i in range(25)]
    path = make_clip(f"late{suffix}", frame_times=times, seconds=2.5)
    frame, time = read_frame(path)
    assert av_helpers.frame_index(frame) == 12 and time == pytest.approx(1.48)
    clip = read_clip(path, audio_seconds=1.0)
    assert av_helpers.frame_index(clip.frame) == 12 and clip.frame_time == pytest.approx(1.48)
    assert clip.start == pytest.approx(1.0) and clip.duration == pytest.approx(1.0)
    # The audio window is centred on the frame's timestamp on the file's timeline.
    np.testing.assert_allclose(clip.audio, read_audio(path, start=0.98, duration=1.0), atol=1e-6)
    assert av_helpers.frame_index(read_frame(path, 0.5)[0]) == 0  # before the first frame
    assert av_helpers.frame_index(read_frame(path, 2.0)[0]) == 24
    with pytest.raises(ClipReadError, match=r"past the end of the video \(2\.000 s\)"):
        read_frame(path, 2.1)


def test_middle_frame_of_a_file_cut_by_an_edit_list(make_clip, av_helpers, tmp_path):
    # Shifting every packet 0.4 s earlier makes the mp4 muxer write an edit list that hides
    # frames 0-9: the demuxer still returns their packets (flagged discard, for decoding the
    # rest) but no frame of them is shown. The span is frames 10-24: middle frame 17.
    src = make_clip("whole.mp4", n_frames=25, audio=False)
    cut = tmp_path / "cut.mp4"
    with av.open(str(src)) as inp, av.open(str(cut), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.dts is not None:
                shift = round(0.4 / packet.time_base)
                packet.pts, packet.dts, packet.stream = (
                    packet.pts - shift,
                    packet.dts - shift,
                    stream,
                )
                out.mux(packet)
    frame, time = read_frame(cut)
    assert av_helpers.frame_index(frame) == 17 and time == pytest.approx(0.28)


@pytest.mark.parametrize("size", [(1, 1), (20, 4000), (33, 17)])
def test_odd_resolutions_decode_with_their_colour(make_clip, av_helpers, size):
    path = make_clip("odd.mp4", n_frames=5, size=size)
    frame, _ = read_frame(path)
    # x264 needs even sizes: the writer pads one row/column, which the file then has.
    assert frame.shape == (size[0] + size[0] % 2, size[1] + size[1] % 2, 3)
    np.testing.assert_allclose(frame.reshape(-1, 3).mean(0), av_helpers.frame_colour(2), atol=4)


@pytest.mark.parametrize("size", [(33, 17), (141, 250)])
def test_odd_resolutions_stay_odd_with_a_codec_that_takes_them(make_clip, av_helpers, size):
    path = make_clip("odd.mp4", n_frames=5, size=size, video_codec="mpeg4")
    frame, _ = read_frame(path)
    assert frame.shape == (*size, 3)
    np.testing.assert_allclose(frame.reshape(-1, 3).mean(0), av_helpers.frame_colour(2), atol=4)


@pytest.mark.parametrize(
    ("sample_rate", "channels"), [(8000, 1), (16000, 1), (44100, 2), (48000, 6)]
)
def test_audio_is_resampled_and_downmixed(make_clip, av_helpers, sample_rate, channels):
    path = make_clip("a.mp4", n_frames=25, sample_rate=sample_rate, channels=channels, freq=440)
    audio = read_audio(path, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 16000 <= len(audio) <= 16000 + AAC_SLACK_FRAMES * 16000 / sample_rate + 16
    middle = audio[4000:12000]
    assert av_helpers.dominant_frequency(middle, 16000) == pytest.approx(440, abs=3)
    # The same sine in every channel keeps its amplitude (5.1: AAC band-limits the LFE channel).
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.1 if channels < 6 else 0.12)


def test_audio_window_is_zero_padded_to_exact_length(make_clip):
    path = make_clip("a.mp4", n_frames=25)
    before = read_audio(path, start=-0.5, duration=1.0)
    assert len(before) == 16000
    assert not before[:7900].any() and np.abs(before[8100:]).max() > 0.4
    after = read_audio(path, 16000, start=0.9, duration=0.75)
    assert len(after) == 12000
    assert np.abs(after[:1500]).max() > 0.4 and not after[-8000:].any()


def test_audio_window_after_seek_matches_full_decode(make_clip):
    path = make_clip("long.mp4", n_frames=25, fps=5, freq=1000)  # 5 s, window reached by seek
    full = read_audio(path)
    window = read_audio(path, start=3.5, duration=1.0)
    np.testing.assert_allclose(window, full[56000:72000], atol=2e-3)


def test_read_clip_centres_audio_on_the_frame(tmp_path, av_helpers):
    from avdet.data.writer import write_av_clip

    # 4 s: 300 Hz for the first 2 s, then 1000 Hz; the middle frame is at 2.0 s.
    low, high = av_helpers.sine(300, 2.0, 16000), av_helpers.sine(1000, 2.0, 16000)
    frames = [np.full((32, 32, 3), av_helpers.frame_colour(i), np.uint8) for i in range(20)]
    path = write_av_clip(tmp_path / "c.mp4", frames, np.concatenate([low, high], 1), fps=5)
    clip = read_clip(path, audio_seconds=2.0)
    assert (clip.width, clip.height, clip.start, clip.duration) == (32, 32, 0.0, 4.0)
    assert clip.sample_rate == 16000
    assert clip.frame_time == pytest.approx(2.0) and av_helpers.frame_index(clip.frame) == 10
    assert len(clip.audio) == 32000
    first, second = clip.audio[1000:14000], clip.audio[18000:31000]
    assert av_helpers.dominant_frequency(first, 16000) == pytest.approx(300, abs=3)
    assert av_helpers.dominant_frequency(second, 16000) == pytest.approx(1000, abs=3)
    whole = read_clip(path, audio_seconds=None)
    assert 64000 <= len(whole.audio) <= 64000 + AAC_SLACK_FRAMES


def test_crop_or_pad():
    samples = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(samples, 10, -0.2, 0.5), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(crop_or_pad(samples, 10, 0.8, 0.4), [9, 10, 0, 0])
    np.testing.assert_array_equal(crop_or_pad(samples, 10, 0.7, None), [8, 9, 10])
    np.testing.assert_array_equal(
        crop_or_pad(samples, 10, 1.0, 0.3, first_sample_time=0.5), [6, 7, 8]
    )


def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index first, so a truncated copy still opens and claims its full length."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def _bad_files(make_clip, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = make_clip("good.mp4", n_frames=50, size=(64, 80))
    data = good.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    fast = _faststart_copy(good, tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "fast_cut.mp4").write_bytes(fast[: int(len(fast) * 0.7)])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    return {
        "missing": (tmp_path / "missing.mp4", "file not found"),
        "zero": (tmp_path / "zero.mp4", "empty file (0 bytes)"),
        "text": (tmp_path / "text.mp4", "not a readable media file"),
        "half": (tmp_path / "half.mp4", "not a readable media file"),
        # Cut inside an audio packet or after it: either reason names the problem.
        "fast_cut": (tmp_path / "fast_cut.mp4", ("truncated: audio ends at", "undecodable audio")),
        "no_audio": (make_clip("noaudio.mp4", audio=False), "no audio stream"),
        "audio_only": (make_clip("audioonly.mp4", video=False), "no video stream"),
    }


def test_bad_files_raise_clip_read_error_with_reason(make_clip, tmp_path):
    for name, (path, reason) in _bad_files(make_clip, tmp_path).items():
        with pytest.raises(ClipReadError) as info:
            read_clip(path)
        assert info.value.reason.startswith(reason), (name, info.value.reason)
        assert info.value.path == str(path)
        assert str(info.value) == f"{path}: {info.value.reason}"


def test_truncated_video_and_past_the_end(make_clip, tmp_path):
    good = make_clip("good.mp4", n_frames=50, size=(64, 80))
    fast = _faststart_copy(good, tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(fast[: int(len(fast) * 0.7)])
    with pytest.raises(ClipReadError, match="truncated: video ends at"):
        read_frame(tmp_path / "cut.mp4", 1.9)
    with pytest.raises(ClipReadError, match="past the end of the video"):
        read_frame(good, 2.5)
    assert read_audio(make_clip("audioonly.mp4", video=False)).size > 0


def _bright_corner(frame: np.ndarray) -> str:
    """Which corner of the frame holds the white square."""
    height, width = frame.shape[:2]
    top = frame[: height // 2].mean() > frame[height // 2 :].mean()
    left = frame[:, : width // 2].mean() > frame[:, width // 2 :].mean()
    return ("top" if top else "bottom") + ("-left" if left else "-right")


@pytest.mark.parametrize(
    ("rotation", "shape", "corner"),
    [
        (0, (32, 64), "top-left"),
        (90, (64, 32), "bottom-left"),  # a quarter turn counter-clockwise
        (-90, (64, 32), "top-right"),  # clockwise: a phone held upright
        (180, (32, 64), "bottom-right"),
    ],
)
def test_frames_are_turned_as_the_display_rotation_says(
    tmp_path, marked_video, rotation, shape, corner
):
    frame, _ = read_frame(marked_video(tmp_path / "rotated.mp4", rotation=rotation))
    assert frame.shape == (*shape, 3)
    assert _bright_corner(frame) == corner


def test_non_square_pixels_are_stretched_to_the_display_aspect(tmp_path, marked_video):
    frame, _ = read_frame(marked_video(tmp_path / "wide.mp4", aspect=Fraction(2)))
    assert frame.shape == (32, 128, 3)  # 64 pixels twice as wide as tall
    square = frame[:, :, 0] > 128
    rows, cols = np.nonzero(square)
    assert rows.max() - rows.min() + 1 in (7, 8, 9)
    assert cols.max() - cols.min() + 1 in (15, 16, 17)  # the 8x8 square shows 16 wide
    both, _ = read_frame(marked_video(tmp_path / "both.mp4", -90, Fraction(1, 2)))
    assert both.shape == (32, 32, 3) and _bright_corner(both) == "top-right"
