"""Distillation losses: teacher targets (soft, top-k, argmax), KL at temperature T, CutMix/MixUp.

The teacher signal modes are the paper's "API provider" ablation: a provider may return full
probabilities, only the top-k, or only the predicted class. Mixing is applied to the input
patches only: the teacher labels the mixed patch itself, so no label mixing is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Beta

SIGNALS = ("soft", "topk", "argmax")


def teacher_targets(
    logits: Tensor, temperature: float, signal: str = "soft", topk: int = 5
) -> Tensor:
    """Target probabilities [B, K] from teacher logits [B, K].

    soft: softmax(logits / T); topk: that distribution kept on the k largest entries and
    renormalised (zero elsewhere); argmax: one-hot of the predicted class (T plays no part).
    """
    if signal == "soft":
        return F.softmax(logits / temperature, dim=-1)
    if signal == "topk":
        if topk <= 0:
            raise ValueError(f"DISTILL.TOPK must be positive, got {topk}")
        values, indices = (logits / temperature).topk(min(topk, logits.shape[-1]), dim=-1)
        return torch.zeros_like(logits).scatter_(-1, indices, F.softmax(values, dim=-1))
    if signal == "argmax":
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    raise ValueError(f"DISTILL.SIGNAL must be one of {SIGNALS}, got {signal!r}")


def distillation_loss(student_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """KL(targets || softmax(student / T)) * T^2, averaged over the batch (Hinton et al.).

    The T^2 keeps gradient magnitudes comparable across temperatures. Zero target entries
    (top-k, argmax) contribute nothing, by the convention 0 log 0 = 0.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_student, targets.float(), reduction="batchmean")
    return kl * temperature**2


def mix_images(images: Tensor, cutmix_alpha: float = 0.0, mixup_alpha: float = 0.0) -> Tensor:
    """CutMix or MixUp of a batch [B, C, H, W] with its reversed order, lambda ~ Beta(a, a).

    With both alphas positive one of the two is drawn per batch (p = 0.5); with neither the
    batch is returned as is. CutMix pastes a box of area fraction (1 - lambda) of image B-1-i
    into image i; MixUp blends lambda * image_i + (1 - lambda) * image_{B-1-i}. Randomness
    comes from torch's global generator (seeded, and saved in checkpoints, by the engine).
    """
    modes = [(m, a) for m, a in (("cutmix", cutmix_alpha), ("mixup", mixup_alpha)) if a > 0]
    if not modes or images.shape[0] < 2:
        return images
    mode, alpha = modes[int(torch.randint(len(modes), ()))]
    lam = float(Beta(float(alpha), float(alpha)).sample())
    other = images.flip(0)
    if mode == "mixup":
        return lam * images + (1.0 - lam) * other
    height, width = images.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    box_h, box_w = round(height * cut), round(width * cut)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return mixed
