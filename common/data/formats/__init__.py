"""Readers for on-disk data set formats whose paper folders do not own a reader.

* :func:`read_chestxray14`: NIH ChestX-ray14 (``Data_Entry_2017.csv``, official split lists,
  Kaggle ``images_###/images/`` layout), used by ``charm_xray``.
* :func:`read_xmnet`: MGANet / XMNet leaf-vein sets (``labels.pkl``, ``train/``, ``test/``,
  ``l2_mask/``), used by ``xmnet``.
"""

from common.data.formats.chestxray14 import DISEASE_LABELS, ChestXray14Record, read_chestxray14
from common.data.formats.xmnet import XMNetRecord, load_labels_pkl, read_xmnet

__all__ = [
    "DISEASE_LABELS",
    "ChestXray14Record",
    "XMNetRecord",
    "load_labels_pkl",
    "read_chestxray14",
    "read_xmnet",
]
