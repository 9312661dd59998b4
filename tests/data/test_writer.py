"""write_av_clip writes the same bytes for the same input, whatever the process did before."""

from __future__ import annotations

import numpy as np

from avdet.data.toy import render_toy_audio, render_toy_video, sample_toy_clip
from avdet.data.writer import write_av_clip


def test_same_clip_same_bytes_after_other_allocations(tmp_path):
    # x264's AVX-512 code read memory it had not written, so the same frames came out as other
    # bytes depending on what the heap held (most writes differed on this project's machines).
    clip = sample_toy_clip(0, 3, 8)
    frames, audio = render_toy_video(clip), render_toy_audio(clip)
    rng = np.random.default_rng(0)
    written = set()
    for attempt in range(5):
        garbage = [rng.bytes(int(n)) for n in rng.integers(1_000, 3_000_000, 20)]
        path = write_av_clip(
            tmp_path / f"{attempt}.mp4", frames, audio, fps=clip.fps, sample_rate=clip.sample_rate
        )
        written.add(path.read_bytes())
        del garbage
    assert len(written) == 1
