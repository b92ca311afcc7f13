"""Shared fixtures for the DCAL tests: tiny synthetic data sets in the native layouts and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FGVC_CONFIG = REPO / "dcal" / "configs" / "fgvc" / "cub200.yaml"
REID_CONFIG = REPO / "dcal" / "configs" / "reid" / "veri776.yaml"


def tiny_opts(data_root: Path, num_classes: int, save_dir: Path, *, epochs: int = 1, batch: int = 8) -> list[str]:
    """--opts for a 2-block DeiT-tiny-shaped model on 32 px images with 8 px patches (16 tokens)."""
    return [
        "device=cpu", f"data.data_root={data_root}", f"model.num_classes={num_classes}", "model.img_size=[32,32]",
        "data.image_size=[32,32]", "model.patch_size=8", "model.num_sa_blocks=2", "model.num_pwca_blocks=2",
        "model.backbone_name=deit_tiny_patch16_224", "model.embed_dim=192", "model.num_heads=3",
        f"data.batch_size={batch}", "data.num_workers=0", f"training.num_epochs={epochs}", "training.warmup_epochs=0",
        f"save_dir={save_dir}",
    ]


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory) -> Path:
    from common.synth import cub200

    root = tmp_path_factory.mktemp("cub")
    cub200.write(root, 40, 0, num_classes=4)
    return root


@pytest.fixture(scope="session")
def veri_root(tmp_path_factory) -> Path:
    from common.synth import veri776

    root = tmp_path_factory.mktemp("veri")
    veri776.write(root, 48, 0)
    return root


@pytest.fixture(scope="session")
def market_root(tmp_path_factory) -> Path:
    from common.synth import market1501

    root = tmp_path_factory.mktemp("market")
    market1501.write(root, 48, 0)
    return root
