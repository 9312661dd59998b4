"""Compress a teacher with single-image patches as the only data (the paper's table 16).

Two methods, each followed by distillation towards the original teacher's outputs on patches:
- "prune": global magnitude pruning (torch.nn.utils.prune, L1 over every conv and linear weight)
  to a sparsity, then fine-tuning with the masks fixed; the masks are made permanent at the end.
- "int8": 8-bit quantisation (torch.ao, FX graph mode, x86 backend). Post-training quantisation
  calibrated on patches is reported as the no-fine-tuning baseline; quantisation-aware training
  distilled on patches is the compressed model. The int8 model runs on the CPU.

`compress_teacher` reports accuracy before and after each step on the labelled test set.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

from avdet.distill.models import accuracy

logger = logging.getLogger(__name__)

METHODS = ("prune", "int8")
QUANT_BACKEND = "x86"

# (model to fine-tune, output folder name) -> the fine-tuned model; see task.distil.
DistilFn = Callable[[nn.Module, str], nn.Module]


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every Conv2d and Linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` fraction of smallest-magnitude conv/linear weights, over the whole model
    (global L1); the masks stay attached (weight = weight_orig * weight_mask) for fine-tuning."""
    if not 0.0 < amount < 1.0:
        raise ValueError(f"pruning amount must be in (0, 1), got {amount}")
    prune.global_unstructured(
        prunable_weights(model), pruning_method=prune.L1Unstructured, amount=amount
    )
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks into the weights (removes weight_orig / weight_mask)."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv/linear weights."""
    weights = [getattr(m, n) for m, n in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


def serialized_size(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: the size a user stores."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@contextlib.contextmanager
def _torch_ao() -> Iterator[None]:
    """torch.ao.quantization warns that it, and the quantized tensors its int8 modules hold, move
    to torchao; the issue asks for torch.ao."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "Please use quant_min and quant_max", UserWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel")
        yield


def quantization_ready(model: nn.Module, example: torch.Tensor, qat: bool) -> nn.Module:
    """An FX-traced copy of `model` with observers (PTQ, eval mode) or fake-quant (QAT, train
    mode) for the x86 backend; `example` is one input batch [B, 3, H, W]."""
    torch.backends.quantized.engine = QUANT_BACKEND
    model = copy.deepcopy(model).cpu().requires_grad_(True)
    with _torch_ao():
        if qat:
            mapping = get_default_qat_qconfig_mapping(QUANT_BACKEND)
            return prepare_qat_fx(model.train(), mapping, example_inputs=(example,))
        mapping = get_default_qconfig_mapping(QUANT_BACKEND)
        return prepare_fx(model.eval(), mapping, example_inputs=(example,))


@torch.no_grad()
def calibrate(model: nn.Module, patches: Dataset, num_batches: int, batch_size: int) -> None:
    """Run `num_batches` batches of patches through an observed model (eval mode, on the CPU)."""
    model.eval()
    loader = DataLoader(patches, batch_size=batch_size, shuffle=False)
    for i, images in enumerate(loader):
        if i >= num_batches:
            break
        model(images)


def to_int8(model: nn.Module) -> nn.Module:
    """Convert an observed or QAT model to an int8 model (eval mode, CPU)."""
    with _torch_ao():
        return convert_fx(model.cpu().eval())


def compress_teacher(
    teacher: nn.Module,
    methods: list[str],
    patches: Dataset,
    test_set: Dataset,
    distil: DistilFn,
    prune_amount: float = 0.5,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Compress `teacher` by each method with patches as the only data; accuracies and sizes.

    Keys: teacher_acc and teacher_bytes, then per method: prune_sparsity, prune_acc_before_ft
    (pruned, not fine-tuned), prune_acc (after distillation); int8_ptq_acc (calibrated on
    patches, no fine-tuning), int8_acc (QAT distilled on patches), int8_bytes.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown compression methods {unknown}; valid: {list(METHODS)}")
    teacher = teacher.eval()
    results = {
        "teacher_acc": accuracy(teacher, test_set, batch_size, device),
        "teacher_bytes": serialized_size(teacher),
    }
    if "prune" in methods:
        pruned = magnitude_prune(copy.deepcopy(teacher).requires_grad_(True), prune_amount)
        results["prune_acc_before_ft"] = accuracy(pruned, test_set, batch_size, device)
        pruned = make_pruning_permanent(distil(pruned, f"prune_{prune_amount:g}"))
        results["prune_sparsity"] = sparsity(pruned)
        results["prune_acc"] = accuracy(pruned, test_set, batch_size, device)
    if "int8" in methods:
        example = torch.stack([patches[i] for i in range(min(len(patches), 2))])
        observed = quantization_ready(teacher, example, qat=False)
        calibrate(observed, patches, num_batches=8, batch_size=batch_size)
        results["int8_ptq_acc"] = accuracy(to_int8(observed), test_set, batch_size)
        qat = distil(quantization_ready(teacher, example, qat=True), "int8_qat")
        quantized = to_int8(qat)
        results["int8_acc"] = accuracy(quantized, test_set, batch_size)
        results["int8_bytes"] = serialized_size(quantized)
    logger.info("compression results: %s", results)
    return results
