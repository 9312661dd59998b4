"""Spectrograms in torch (on any device, batched): log-mel and the LVS/EZ-VSL linear log-STFT."""

from __future__ import annotations

import functools
from collections.abc import Callable

import librosa
import numpy as np
import torch
from torch import Tensor

from avdet.config import CfgNode

# Added before the log so silence gives a finite floor (log(1e-6) ~ -13.8 for power).
MEL_EPS = 1e-6
# The LVS/EZ-VSL code adds 1e-7 before the log.
STFT_EPS = 1e-7

SPECTROGRAMS = ("logmel", "logstft")


def log_mel_spectrogram(
    wave: Tensor,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    win_length: int | None,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> Tensor:
    """log(mel power + 1e-6) of `wave` [..., T] -> [..., n_mels, 1 + T // hop_length].

    Same framing as librosa.feature.melspectrogram (centred frames, zero padding, hann window,
    power 2, librosa's Slaney mel filterbank), computed with torch.stft.
    """
    power = _stft(wave, n_fft, hop_length, win_length, center=True).abs().pow(2)
    mel = _mel_filterbank(sample_rate, n_fft, n_mels, float(fmin), fmax)
    mel = torch.from_numpy(mel).to(device=power.device, dtype=power.dtype)
    return torch.log(torch.matmul(mel, power) + MEL_EPS)


def log_stft_spectrogram(
    wave: Tensor, n_fft: int = 512, hop_length: int = 238, win_length: int | None = None
) -> Tensor:
    """log(|STFT| + 1e-7) of `wave` [..., T] -> [..., n_fft // 2 + 1, 1 + (T - n_fft) // hop].

    The LVS/EZ-VSL input: uncentred hann frames of 512 samples every 238 (274 overlap), so 3 s at
    16 kHz gives the familiar [257, 200].
    """
    return torch.log(_stft(wave, n_fft, hop_length, win_length, center=False).abs() + STFT_EPS)


def build_spectrogram(cfg: CfgNode) -> Callable[[Tensor], Tensor]:
    """The spectrogram named by cfg.INPUT.AUDIO.SPECTROGRAM with its parameters from the config."""
    acfg = cfg.INPUT.AUDIO
    win_length = acfg.WIN_LENGTH or None
    if acfg.SPECTROGRAM == "logmel":
        return functools.partial(
            log_mel_spectrogram,
            sample_rate=acfg.SAMPLE_RATE,
            n_fft=acfg.N_FFT,
            hop_length=acfg.HOP_LENGTH,
            win_length=win_length,
            n_mels=acfg.N_MELS,
            fmin=acfg.FMIN,
            fmax=acfg.FMAX or None,
        )
    if acfg.SPECTROGRAM == "logstft":
        return functools.partial(
            log_stft_spectrogram,
            n_fft=acfg.N_FFT,
            hop_length=acfg.HOP_LENGTH,
            win_length=win_length,
        )
    raise ValueError(
        f"INPUT.AUDIO.SPECTROGRAM: unknown spectrogram {acfg.SPECTROGRAM!r}, "
        f"expected one of {SPECTROGRAMS}"
    )


def _stft(wave: Tensor, n_fft: int, hop_length: int, win_length: int | None, center: bool):
    """Complex STFT of [..., T] -> [..., n_fft // 2 + 1, frames] with a hann window."""
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, device=wave.device, dtype=wave.dtype)
    flat = wave.reshape(-1, wave.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=center,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.reshape(*wave.shape[:-1], *spec.shape[-2:])


@functools.lru_cache(maxsize=16)
def _mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """librosa's mel filterbank [n_mels, n_fft // 2 + 1], cached per parameter set."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
