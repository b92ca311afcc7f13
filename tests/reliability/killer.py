"""Run an entry point and ``kill -9`` itself at a chosen bookkeeping moment of ``common.engine.fit``.

    python -m tests.reliability.killer POINT EPOCH MODULE [ARGS...]

POINT is one of
  ``before_last``  right before ``checkpoint_last`` of EPOCH is written (after its CSV row),
  ``before_best``  between ``checkpoint_last`` and the best checkpoint of EPOCH,
  ``during_last``  half-way through writing ``checkpoint_last`` of EPOCH (a partial temp file stays),
  ``none``         no kill.
``KILL_FILES=a.pth,b.pth`` in the environment restricts the kill to those checkpoint files.
MODULE runs as ``__main__`` (``dvxray.main_finetune``, ``tests.reliability.toy_train``, ...).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

import common.checkpoint as checkpoint
import common.engine as engine


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, epoch: int) -> None:
    real_save = engine.save_checkpoint
    state = {"last_written": False}
    # KILL_FILES=a.pth,b.pth: only these checkpoint files count (e.g. the second phase of a two-phase run)
    only = {n for n in os.environ.get("KILL_FILES", "").split(",") if n}

    def save(path, ckpt):
        path = Path(path)
        is_last = not path.name.startswith("best") and "last" in path.name
        if only and path.name not in only:
            real_save(path, ckpt)
            return
        if ckpt.get("epoch") == epoch:
            if point == "before_last" and is_last:
                _die()
            if point == "before_best" and not is_last and state["last_written"]:
                _die()
            if point == "during_last" and is_last:
                def partial(f, obj=ckpt):
                    import io

                    import torch

                    buf = io.BytesIO()
                    torch.save(obj, buf)
                    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    _die()

                checkpoint._atomic_write(path, partial)
        real_save(path, ckpt)
        if is_last and ckpt.get("epoch") == epoch:
            state["last_written"] = True

    engine.save_checkpoint = save


if __name__ == "__main__":
    point, epoch, module, *rest = sys.argv[1:]
    if point != "none":
        install(point, int(epoch))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
