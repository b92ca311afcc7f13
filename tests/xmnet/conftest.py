"""Shared fixtures: small synthetic leaf-vein sets in the MGANet / XMNet layout (real digit glyphs)."""

from pathlib import Path

import pytest

from common.synth.xmnet import write


@pytest.fixture(scope="session")
def xm_root(tmp_path_factory) -> Path:
    """``<data_dir>`` holding ``soybean_2_1/`` with 3 classes, 30 train / 15 test images of 64 px."""
    data_dir = tmp_path_factory.mktemp("xmnet_data")
    write(data_dir / "soybean_2_1", 45, seed=0, num_classes=3)
    return data_dir
