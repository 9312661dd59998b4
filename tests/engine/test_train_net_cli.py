"""tools/train_net.py: help, config and task errors, and end-to-end runs of a tiny task."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_toy_task import toy_cfg

from avdet.config import load_config
from avdet.utils.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "train_net.py"


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fails(train_net, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        train_net.cli(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_explains_flags_overrides_and_tasks(train_net, capsys):
    with pytest.raises(SystemExit) as exc:
        train_net.cli(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("--config-file", "--resume", "--eval-only", "--num-gpus", "--dist-url"):
        assert text in out
    assert "SOLVER.BASE_LR 0.05" in out and "torchrun" in out
    assert "av " in out and "detector" in out and "package.module:function" in out


def test_unknown_key_names_the_closest_one(train_net, capsys):
    err = _fails(train_net, capsys, ["SOLVER.BASE_LRR", "0.1"])
    assert "unknown config key SOLVER.BASE_LRR; did you mean SOLVER.BASE_LR?" in err


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("detectr", "unknown TASK 'detectr' (did you mean 'detector'?); valid: ['av',"),
        ("engine_toy_task:nothing", "module engine_toy_task has no function 'nothing'"),
        ("no_such_module:run", "module no_such_module not found"),
    ],
)
def test_bad_task_is_a_clear_error(train_net, capsys, task, message):
    assert message in _fails(train_net, capsys, ["TASK", task])


def _run(*args: str) -> subprocess.CompletedProcess:
    """tools/train_net.py as a user runs it, with the toy task importable."""
    path = os.pathsep.join([str(REPO), str(REPO / "tests" / "engine")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, str(TOOL), *args]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _results(stdout: str) -> dict:
    """The task's results, printed as indented JSON at the end of the output."""
    return json.loads(stdout[stdout.rindex("{\n") :])


def test_train_resume_and_eval_end_to_end(tmp_path, train_net, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(toy_cfg(tmp_path / "eval").dump())  # --eval-only below writes its logs here
    out = tmp_path / "run"
    trained = _results(_run("--config-file", str(config), "OUTPUT_DIR", str(out)).stdout)
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint"} <= names
    assert {"model_0000004.pth", "model_0000009.pth", "model_final.pth.sha256"} <= names
    assert [r["iteration"] for r in read_jsonl(out / "metrics.json")] == [1, 3, 5, 7, 9, 11]
    assert "TensorBoard: off (not installed)" in (out / "log.txt").read_text()
    saved = load_config(out / "config.yaml")
    assert str(out) == saved.OUTPUT_DIR and saved.TASK == "engine_toy_task:run"

    # the same entry point in this process (cheaper than another interpreter)
    train_net.cli(["--config-file", str(out / "config.yaml"), "--resume"])
    assert _results(capsys.readouterr().out) == trained  # nothing left to train
    assert "resumed from" in (out / "log.txt").read_text()

    weights = str(out / "model_final.pth")
    train_net.cli(["--config-file", str(config), "--eval-only", "MODEL.WEIGHTS", weights])
    assert _results(capsys.readouterr().out) == trained


@pytest.mark.slow
def test_num_gpus_two_starts_two_cpu_processes(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(toy_cfg(tmp_path / "run").dump())
    run = _run("--config-file", str(config), "--num-gpus", "2", "SOLVER.MAX_ITER", "4")
    assert run.stdout.count('"mse"') == 1  # results printed by rank 0 only
    assert "2 process(es) x batch 4" in (tmp_path / "run" / "log.txt").read_text()
    assert (tmp_path / "run" / "log.txt.rank1").exists()
    assert [r["iteration"] for r in read_jsonl(tmp_path / "run" / "metrics.json")] == [1, 3]
