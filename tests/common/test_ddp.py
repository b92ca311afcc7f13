import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


@pytest.mark.dist
def test_two_process_gloo_ddp_matches_single_process_on_same_global_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "tests.common.ddp_worker", str(single), "8"], cwd=ROOT, env=_env(),
                   check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                    "-m", "tests.common.ddp_worker", str(ddp), "4"],
                   cwd=ROOT, env=_env(), check=True, timeout=300)
    a = torch.load(single / "final_weights.pt", weights_only=True)
    b = torch.load(ddp / "final_weights.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # metrics gathered across both ranks: every validation sample counted once
    ma = json.loads((single / "metrics.json").read_text())
    mb = json.loads((ddp / "metrics.json").read_text())
    assert mb["final"]["n"] == ma["final"]["n"] == 24
    assert mb["final"]["acc"] == pytest.approx(ma["final"]["acc"])
