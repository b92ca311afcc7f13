import json
import subprocess
import sys

import pytest
import torch

from tests.torchrun import ROOT, torchrun_command, torchrun_env


@pytest.mark.dist
def test_two_process_gloo_ddp_matches_single_process_on_same_global_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = torchrun_env(tmp_path)
    subprocess.run([sys.executable, "-m", "tests.common.ddp_worker", str(single), "8"], cwd=ROOT, env=env,
                   check=True, timeout=300)
    subprocess.run(torchrun_command("-m", "tests.common.ddp_worker", ddp, "4"), cwd=ROOT, env=env, check=True,
                   timeout=300)
    a = torch.load(single / "final_weights.pt", weights_only=True)
    b = torch.load(ddp / "final_weights.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # metrics gathered across both ranks: every validation sample counted once
    ma = json.loads((single / "metrics.json").read_text())
    mb = json.loads((ddp / "metrics.json").read_text())
    assert mb["final"]["n"] == ma["final"]["n"] == 24
    assert mb["final"]["acc"] == pytest.approx(ma["final"]["acc"])
