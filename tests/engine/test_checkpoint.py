"""Checksummed atomic checkpoints, verification, strict loading, and tools/verify_checkpoint.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avdet.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    load_weights,
    sha256_file,
)
from avdet.utils.seed import get_rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "verify_checkpoint.py"


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.fixture
def saved(tmp_path):
    """A checkpoint with a model, an optimiser state, RNG states and plain values."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(
        "model_0000009",
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        iteration=9,
        rng=get_rng_state(),
        note="text",
    )
    return ckpt, path, model


def test_save_writes_file_sidecar_and_last_checkpoint(saved, tmp_path):
    ckpt, path, _ = saved
    assert path == tmp_path / "model_0000009.pth"
    sidecar = json.loads((tmp_path / "model_0000009.pth.sha256").read_text())
    assert sidecar == {
        "file": "model_0000009.pth",
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
    }
    assert json.loads((tmp_path / "last_checkpoint").read_text()) == sidecar
    assert ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == path
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_with_weights_only(saved):
    ckpt, path, model = saved
    state = ckpt.load(path)
    assert state["iteration"] == 9 and state["note"] == "text"
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    restored = _net()
    load_weights(restored, path)
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())
    # the RNG state (NumPy's included) survives weights_only loading and restores exactly
    set_rng_state(state["rng"])
    first = (torch.rand(3), np.random.rand(3))
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), first[0])
    assert (np.random.rand(3) == first[1]).all()


def test_truncated_file_is_an_error_naming_it(saved):
    ckpt, path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model_0000009\.pth: size is \d+ bytes .*truncated"):
        ckpt.load(path)
    # without the sidecar, torch's own failure is still reported with the file name
    with pytest.raises(CheckpointError, match=r"model_0000009\.pth: cannot load with weights_only"):
        load_checkpoint(path, verify=False)


def test_one_edited_byte_is_a_hash_mismatch(saved):
    ckpt, path, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model_0000009\.pth: sha256 [0-9a-f]{64} does not"):
        ckpt.load(path)


def test_missing_file_and_bad_last_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.pth: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.pth")
    ckpt = Checkpointer(tmp_path)
    assert ckpt.get_checkpoint_file() is None and not ckpt.has_checkpoint()
    (tmp_path / "last_checkpoint").write_text("model_gone.pth")  # detectron2's plain format
    with pytest.raises(CheckpointError, match=r"last_checkpoint: names .*model_gone\.pth"):
        ckpt.get_checkpoint_file()


def test_last_checkpoint_disagreeing_with_sidecar(saved, tmp_path):
    ckpt, path, _ = saved
    record = json.loads((tmp_path / "last_checkpoint").read_text())
    record["sha256"] = "0" * 64
    (tmp_path / "last_checkpoint").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="the checkpoint was replaced"):
        ckpt.get_checkpoint_file()


class _Opaque:
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Opaque()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: cannot load with weights_only"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(saved, tmp_path, monkeypatch):
    ckpt, path, _ = saved
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0000009", model={})
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0000019", model={})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert ckpt.get_checkpoint_file() == path


def test_non_main_process_writes_nothing(tmp_path):
    assert Checkpointer(tmp_path, save_to_disk=False).save("x", a=1) is None
    assert list(tmp_path.iterdir()) == []


def test_model_state_errors_list_key_names():
    model = _net()
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["0.bias"]
    state["2.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError) as err:
        load_model_state(_net(), state, source="ckpt.pth")
    message = str(err.value)
    assert message.startswith("ckpt.pth: does not fit Sequential")
    assert "missing keys: 0.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "2.weight (5, 4) vs (2, 4)" in message


def test_non_strict_load_keeps_what_fits_and_ddp_prefix_is_removed():
    source, target = _net(), _net()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.2.weight"] = torch.zeros(5, 4)
    result = load_model_state(target, state, source="ddp.pth", strict=False)
    assert (
        result.missing == [] and result.unexpected == [] and result.shape_mismatch == ["2.weight"]
    )
    assert torch.equal(target[0].weight, source[0].weight)
    assert not torch.equal(target[2].weight, torch.zeros(2, 4))


def _load_tool():
    spec = importlib.util.spec_from_file_location("verify_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_checkpoint_tool(saved, tmp_path, capsys):
    _, path, _ = saved
    tool = _load_tool()
    assert tool.main([str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK   {path}: {path.stat().st_size} bytes")

    corrupt = tmp_path / "corrupt.pth"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    corrupt.with_name("corrupt.pth.sha256").write_bytes(
        path.with_name(path.name + ".sha256").read_bytes()
    )
    bare = tmp_path / "bare.pth"
    torch.save(_net().state_dict(), bare)
    # as a user runs it: a separate process, exit status 1 when any file fails
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(TOOL), str(path), str(corrupt), str(bare)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"OK   {path}")
    assert lines[1].startswith(f"FAIL {corrupt}: sha256")
    assert lines[2].startswith(f"FAIL {bare}: no .sha256 sidecar")
