"""Run an entry point and ``kill -9`` itself at a chosen bookkeeping moment of ``common.engine.fit``.

    python -m tests.reliability.killer POINT EPOCH MODULE [ARGS...]

POINT is one of
  ``before_last``  right before ``checkpoint_last`` of EPOCH is written (after its CSV row),
  ``after_last``   right after ``checkpoint_last`` of EPOCH is written (before the best checkpoint, if any),
  ``before_best``  between ``checkpoint_last`` and the best checkpoint of EPOCH,
  ``during_last``  half-way through writing ``checkpoint_last`` of EPOCH (a partial temp file stays),
  ``mid_epoch``    in the middle of training epoch EPOCH (after half of its batches, before the next one),
  ``call:MOD:ATTR:N``  at the start of the N-th call (from 1) of ``MOD.ATTR`` (``ATTR`` may be
                   ``Class.method``; EPOCH is ignored), e.g. ``call:xmnet.xgb_stage:train_booster:3``,
  ``none``         no kill.
``KILL_FILES=a.pth,b.pth`` in the environment restricts the checkpoint points to those files; an entry
with a ``/`` matches the end of the path (``phase1/checkpoint_last.pth``: one stage of a multi-fit run).
``KILL_DIR=runs/exp/phase2`` restricts ``mid_epoch`` to the ``fit`` whose output folder ends with it.
MODULE runs as ``__main__`` (``dvxray.main_finetune``, ``tests.reliability.toy_train``, ...).
"""

from __future__ import annotations

import importlib
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import common.checkpoint as checkpoint
import common.engine as engine


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _matches(path: Path, entries: set[str]) -> bool:
    return any(path.as_posix().endswith("/" + e) if "/" in e else path.name == e for e in entries)


def install_call(spec: str) -> None:
    """``MOD:ATTR:N``: replace ``MOD.ATTR`` by a wrapper that dies at the start of its N-th call."""
    module_name, attr, n = spec.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = attr.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(n):
            _die()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


class _DieHalfWay:
    """A training loader that dies when the batch after the first half is asked for."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == len(self.loader) // 2:
                _die()
            yield batch


def install_mid_epoch(epoch: int) -> None:
    real_train = engine.train_one_epoch
    where = os.environ.get("KILL_DIR", "")

    def train_one_epoch(task, loader, optimizer, *, state, **kwargs):
        out = Path(state.config.output_dir).resolve().as_posix()
        if state.epoch == epoch and (not where or out.endswith("/" + where.strip("/"))):
            loader = _DieHalfWay(loader)
        return real_train(task, loader, optimizer, state=state, **kwargs)

    engine.train_one_epoch = train_one_epoch


def install(point: str, epoch: int) -> None:
    if point.startswith("call:"):
        install_call(point[len("call:"):])
        return
    if point == "mid_epoch":
        install_mid_epoch(epoch)
        return
    real_save = engine.save_checkpoint
    state = {"last_written": False}
    # KILL_FILES=a.pth,b.pth: only these checkpoint files count (e.g. the second phase of a two-phase run)
    only = {n for n in os.environ.get("KILL_FILES", "").split(",") if n}

    def save(path, ckpt):
        path = Path(path)
        is_last = not path.name.startswith("best") and "last" in path.name
        if only and not _matches(path, only):
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
            if point == "after_last":
                _die()

    engine.save_checkpoint = save


if __name__ == "__main__":
    point, epoch, module, *rest = sys.argv[1:]
    if point != "none":
        install(point, int(epoch))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
