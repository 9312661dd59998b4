"""Spectrograms: torch log-mel against librosa on a real tone, the LVS log-STFT, the config builder."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from avdet.config import get_cfg
from avdet.data.audio import build_spectrogram, log_mel_spectrogram, log_stft_spectrogram

SR = 16000


def _tone(freq: float, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_matches_librosa():
    rng = np.random.default_rng(0)
    wave = _tone(440) + 0.05 * rng.standard_normal(3 * SR).astype(np.float32)
    ours = log_mel_spectrogram(torch.from_numpy(wave), SR, 512, 160, 400, 64).numpy()
    mel = librosa.feature.melspectrogram(
        y=wave, sr=SR, n_fft=512, hop_length=160, win_length=400, n_mels=64
    )
    assert ours.shape == mel.shape == (64, 301)
    np.testing.assert_allclose(ours, np.log(mel + 1e-6), atol=1e-3)


def test_log_mel_with_fmin_fmax_matches_librosa():
    wave = _tone(1000, 1.0)
    ours = log_mel_spectrogram(torch.from_numpy(wave), SR, 1024, 256, None, 40, 50.0, 4000.0)
    mel = librosa.feature.melspectrogram(
        y=wave, sr=SR, n_fft=1024, hop_length=256, n_mels=40, fmin=50.0, fmax=4000.0
    )
    np.testing.assert_allclose(ours.numpy(), np.log(mel + 1e-6), atol=1e-3)


def test_tone_peaks_in_its_bin():
    wave = torch.from_numpy(_tone(440))
    mel = log_mel_spectrogram(wave, SR, 512, 160, 400, 64)
    centres = librosa.mel_frequencies(n_mels=64 + 2, fmax=SR / 2)[1:-1]
    assert abs(centres[int(mel.mean(-1).argmax())] - 440) < 60
    stft = log_stft_spectrogram(wave)
    assert int(stft.mean(-1).argmax()) == round(440 / (SR / 512))


def test_shapes_and_batching():
    batch = torch.from_numpy(np.stack([_tone(300), _tone(2000)]))[:, None]  # [2, 1, T]
    stft = log_stft_spectrogram(batch)
    assert stft.shape == (2, 1, 257, 200)  # the LVS/EZ-VSL [257, 200] for 3 s at 16 kHz
    single = log_stft_spectrogram(batch[1, 0])
    torch.testing.assert_close(stft[1, 0], single)
    mel = log_mel_spectrogram(batch, SR, 512, 160, 400, 64)
    assert mel.shape == (2, 1, 64, 301)
    assert torch.isfinite(log_mel_spectrogram(torch.zeros(SR), SR, 512, 160, 400, 64)).all()


def test_build_spectrogram_from_config():
    cfg = get_cfg()
    wave = torch.from_numpy(_tone(440))
    logmel = build_spectrogram(cfg)(wave)
    assert logmel.shape == (cfg.INPUT.AUDIO.N_MELS, 1 + len(wave) // cfg.INPUT.AUDIO.HOP_LENGTH)
    expected = log_mel_spectrogram(wave, SR, 512, 160, 400, 64, 0.0, SR / 2)  # FMAX 0 = sr/2
    torch.testing.assert_close(logmel, expected)

    cfg.INPUT.AUDIO.SPECTROGRAM = "logstft"
    cfg.INPUT.AUDIO.HOP_LENGTH = 238
    cfg.INPUT.AUDIO.WIN_LENGTH = 0
    torch.testing.assert_close(build_spectrogram(cfg)(wave), log_stft_spectrogram(wave))

    cfg.INPUT.AUDIO.SPECTROGRAM = "mfcc"
    with pytest.raises(ValueError, match="INPUT.AUDIO.SPECTROGRAM.*'mfcc'"):
        build_spectrogram(cfg)
