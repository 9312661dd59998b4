"""Makes tests/engine/engine_toy_task.py importable as `engine_toy_task` (also in the processes that
the DDP and CLI tests start, which inherit sys.path or get it through PYTHONPATH)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
