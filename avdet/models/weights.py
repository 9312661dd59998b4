"""Load ResNet weights from any avdet checkpoint into any avdet ResNet (visual tower, detector backbone).

Every ResNet in avdet keeps torchvision's submodule names (conv1, bn1, layer1..4), behind a prefix
that depends on where it lives: `visual.trunk.` in the AV model, `backbone.body.` in the detector,
none in a plain torchvision classifier (a distilled student). So one mapping serves all: find the
prefix under which a checkpoint holds a ResNet, strip it, load what the target has.
"""

from __future__ import annotations

import logging
import os
import re

import torch
from torch import nn

from avdet.engine.checkpoint import CheckpointError, read_model_state

logger = logging.getLogger(__name__)

# Where avdet checkpoints keep a ResNet, most specific first ("" = torchvision naming at the top).
RESNET_PREFIXES = ("visual.trunk.", "backbone.body.", "student.", "")
_RESNET_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")


class WeightsError(CheckpointError):
    """Weights do not fit the model; the message names the file and the keys at fault."""


def extract_resnet_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The tensors of the first ResNet found under RESNET_PREFIXES, with torchvision names."""
    for prefix in RESNET_PREFIXES:
        found = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and _RESNET_KEY.match(k[len(prefix) :])
        }
        if found:
            return found
    raise WeightsError(
        f"{source}: no ResNet weights found (looked for {RESNET_PREFIXES} + conv1/layerN)"
    )


def load_resnet_weights(target: nn.Module, path: str | os.PathLike) -> None:
    """Load the ResNet in checkpoint `path` into `target` (a module with torchvision ResNet names)."""
    load_resnet_state(target, extract_resnet_state(read_model_state(path), str(path)), str(path))


def load_resnet_state(target: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load torchvision-named ResNet tensors (from `extract_resnet_state`) into `target`.

    Every parameter of `target` must be found with the right shape; tensors the target lacks
    (e.g. a classifier's `fc`, or stages past the trunk's last one) are ignored and logged.
    """
    own = target.state_dict()
    missing = [k for k in own if k not in weights]
    mismatched = [
        f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or mismatched:
        raise WeightsError(
            f"{source}: cannot initialise {type(target).__name__}: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"shape mismatches {mismatched[:10]}"
        )
    unused = sorted({k.split(".")[0] for k in weights if k not in own})
    target.load_state_dict({k: weights[k] for k in own})
    logger.info("loaded %d ResNet tensors from %s (unused: %s)", len(own), source, unused or "none")
