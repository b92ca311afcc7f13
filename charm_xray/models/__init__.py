"""CHARM-Xray models: the CHARM network (``chest_xray_model``) and its parts (``components``)."""

from charm_xray.models.chest_xray_model import MODEL_NAMES, ChestXrayModel, build_model
from charm_xray.models.components import LKA, MemoryBank, MomentumFinalBlock, SpatialAttention
from charm_xray.models.vgg16_lka import VGG16_LKA

__all__ = [
    "LKA",
    "MODEL_NAMES",
    "ChestXrayModel",
    "MemoryBank",
    "MomentumFinalBlock",
    "SpatialAttention",
    "VGG16_LKA",
    "build_model",
]
