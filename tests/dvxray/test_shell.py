"""main.sh over shell/runlib.sh: the explicit experiment table, --run-specific 2-6 and skip-completed."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAIN_SH = ROOT / "dvxray/main.sh"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(MAIN_SH), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_dry_run_lists_the_table_with_output_folders(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "11 of 11 experiments selected" in text
    assert "./shishi1_5/tiny_conditional_add_8_CoordAtt_loss-mcb_convex" in text
    assert "--teacher_mode false" in text and "--mcb_wmin 1e-3" in text and "--focal_alpha" not in text
    assert "./shishi1_ablation/tiny_conditional_add_Arch1_Baseline_NoAttention_loss-mcb_convex" in text
    r = _run(tmp_path, "--run-specific", "2-6", "--dry-run")
    assert "5 of 11 experiments selected" in r.stdout + r.stderr


def test_missing_pretrained_weights_exit_1(tmp_path):
    r = _run(tmp_path, "--run-specific", "1")
    assert r.returncode == 1 and "pretrained weights not found" in r.stderr


@pytest.mark.slow
def test_run_specific_2_6_runs_five_then_skips(dvxray_data, tmp_path):
    args = ["--run-specific", "2-6", "EPOCHS=1", "INPUT_SIZE=32", "BATCH_SIZE=8", "NUM_WORKERS=0", "DEVICE=cpu",
            "STUDENT_MODEL=convnextv2_atto", "PRETRAINED_WEIGHTS=", f"BASE_OUT_TEMPLATE={tmp_path}/out",
            "EXTRA_ARGS=--amp none --fpn_out_channels 32"]
    r = _run(dvxray_data, *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    finished = sorted(tmp_path.glob("out*/*/_FINISHED"))
    metrics = sorted(tmp_path.glob("out*/*/metrics.json"))
    assert len(finished) == 5 and len(metrics) == 5
    assert (tmp_path / "out_ablation/tiny_conditional_add_Arch1_Baseline_NoAttention_loss-mcb_convex/train.log").is_file()
    stamp = finished[0].read_text()
    r = _run(dvxray_data, *args)
    assert r.returncode == 0
    assert finished[0].read_text() == stamp
    assert "skip" in (r.stdout + r.stderr).lower()
