"""Run the toy training under torchrun (or alone) and save the final weights: used by test_ddp.py."""

import sys

import torch

from common.dist import destroy_distributed, init_distributed
from tests.common.toy import run_toy

if __name__ == "__main__":
    out_dir, batch_size = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    task, summary = run_toy(out_dir, ctx=ctx, epochs=2, batch_size=batch_size, dropout=0.0)
    if ctx.is_primary:
        torch.save(task.model.state_dict(), f"{out_dir}/final_weights.pt")
    destroy_distributed()
