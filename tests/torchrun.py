"""torchrun (``torch.distributed.run``) for tests: a free port, an environment without the caller's
distributed variables, and temporary files inside the test's own folder."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """os.environ with 1 torch thread, the repository importable, and TMPDIR in ``tmp_path``: torchrun's
    agent leaves a ``torchelastic_*`` folder in the temporary folder after every run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    for var in _DIST_VARS:
        env.pop(var, None)
    tmp = tmp_path / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


def torchrun_command(*args: str | Path, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` on one node with ``nproc`` processes, then ``args``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
