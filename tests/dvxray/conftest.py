"""Shared fixtures: one small synthetic DvXray set per test session (real digit glyphs)."""

from pathlib import Path

import pytest

from common.synth.dvxray import write


@pytest.fixture(scope="session")
def dvxray_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvxray_data")
    write(root, 60, seed=1)
    return root
