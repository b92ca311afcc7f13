"""Every bash driver of the repository: `--help` (and `-h`) prints usage, exits 0 and does nothing else.

The drivers run from a copy of the repository's shell scripts (no .venv, no Python code next to them) in
an empty working folder, so a driver that ignored `--help` fails fast instead of training or installing,
and any file or folder it creates (in the copy or in the working folder) is seen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# sourced libraries, not drivers
LIBRARIES = {"shell/runlib.sh", "xmnet/_driver_lib.sh"}


def _drivers() -> list[str]:
    found = sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*.sh")
                   if p.relative_to(REPO).parts[0] not in (".venv", "tests", "demo_data", "demo_runs", ".git"))
    return [d for d in found if d not in LIBRARIES]


DRIVERS = _drivers()


def test_the_driver_list_covers_every_paper_and_shell():
    for name in ("dvxray/convert_all_no_head.sh", "dvxray/main.sh", "dvxray/demo.sh", "charm_xray/demo.sh",
                 "cxrlt/demo.sh", "dcal/demo.sh", "xmnet/demo.sh", "xmnet/train_model_cls.sh",
                 "xmnet/train_model_seg.sh", "xmnet/train_model_seg_unet3plus.sh", "shell/demo.sh",
                 "shell/setup.sh", "shell/test.sh"):
        assert name in DRIVERS


def _snapshot(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for rel in [*DRIVERS, *LIBRARIES]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_help_prints_usage_and_does_nothing_else(driver, flag, repo_copy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = _snapshot(repo_copy, work)
    # no python on the PATH: a driver that went on past --help would fail instead of running anything
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PY": "false", "PYTHON": "false",
           "DEMO_DATA": str(work / "demo_data"), "DEMO_OUT": str(work / "demo_runs"), "LANG": "C"}
    env = {**{k: v for k, v in os.environ.items() if k in ("TMPDIR",)}, **env}
    proc = subprocess.run(["bash", str(repo_copy / driver), flag], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.stdout[-1000:], proc.stderr[-1000:])
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2 and Path(driver).stem.split("_")[0] in proc.stdout, proc.stdout[:500]
    assert proc.stderr == "", proc.stderr[-1000:]
    assert _snapshot(repo_copy, work) == before, sorted(_snapshot(repo_copy, work) - before)
