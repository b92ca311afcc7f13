"""Toy training under torchrun where one rank is killed with SIGKILL at the start of an epoch
(``KILL_RANK`` / ``KILL_EPOCH``; unset = no kill); used by test_ddp_killed_rank.py."""

import os
import signal
import sys

import torch

import common.engine as engine
from common.dist import destroy_distributed, init_distributed
from tests.common.toy import run_toy

if __name__ == "__main__":
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    kill_rank, kill_epoch = int(os.environ.get("KILL_RANK", -1)), int(os.environ.get("KILL_EPOCH", -1))
    train_one_epoch = engine.train_one_epoch

    def maybe_killed(*args, state, **kwargs):
        if ctx.rank == kill_rank and state.epoch == kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_one_epoch(*args, state=state, **kwargs)

    engine.train_one_epoch = maybe_killed
    task, _ = run_toy(out_dir, ctx=ctx, epochs=3, batch_size=4, dropout=0.0, resume="auto")
    if ctx.is_primary:
        torch.save(task.model.state_dict(), f"{out_dir}/final_weights.pt")
    destroy_distributed()
