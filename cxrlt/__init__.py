"""CXR-LT 2026 Task 1 winner (ConvNeXtV2 + CSRA, two stages). Importing registers the timm model
``cxrlt2026_task1_csra_dbcas``."""

from cxrlt.model import CLASS_NAMES, ConvNeXtV2CXR, cxrlt2026_task1_csra_dbcas

__all__ = ["CLASS_NAMES", "ConvNeXtV2CXR", "cxrlt2026_task1_csra_dbcas"]
