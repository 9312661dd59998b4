"""Makes tests/models/av_ddp_worker.py importable as `av_ddp_worker` (also in the processes that
the DDP test spawns, which inherit sys.path)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
