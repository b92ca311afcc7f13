"""CHARM-Xray constants, as the original ``config.py`` (charm_xray.md §2).

Every value here is the default of a ``train.py`` flag (see ``train.py --help``); the Kaggle paths
become ``--data_dir`` / ``--output_dir``.
"""

from __future__ import annotations

import torch

from common.data.formats.chestxray14 import DISEASE_LABELS as _LABELS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED = 85
IMAGE_SIZE = [224, 224]
BATCH_SIZE = {"phase1": 64, "phase2": 128, "test": 32}
EPOCHS = 10  # unused by the original (quirk 20)
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = 0.7, 0.1, 0.2  # unused by the original (quirk 20)


class ModelConfig:
    MOMENTUM = 0.99  # the notebooks' own ModelConfig says 0.9999; their grid sets 0.99 (quirk 17)
    ATTENTION_REDUCTION = 8
    BANK_SIZE = 512
    RARITY_THRESHOLD = 0.2
    RETRIEVAL_K = 3
    DROPOUT_RATE = 0.3
    HIDDEN_DIM = 512
    NUM_CLASSES = 14

    @staticmethod
    def get_feature_dim(model_name: str) -> int | None:
        return {"resnet50": 2048, "densenet121": 1024}.get(model_name)


DISEASE_LABELS: list[str] = list(_LABELS)

# The original's Kaggle paths; here --data_dir holds the three files and the image folders.
DATA_PATHS = {
    "train_val_list": "train_val_list.txt",
    "test_list": "test_list.txt",
    "data_entry": "Data_Entry_2017.csv",
    "image_dir": "*/images/*.png",
}
MODEL_PATHS = {"model_save_dir": "models", "results_dir": "parameter_search_results"}

FASTAI_CONFIG = {
    "mixed_precision": True,
    "early_stopping_patience": 5,
    "min_delta": 0.001,
    "phase1_epochs": 3,  # fine_tune(freeze_epochs=3, ...)
    "phase2_epochs": 20,  # used by train.py as fine_tune(..., epochs=20) of phase 1
    "phase2_lr_range": (2e-5, 8e-5),
}
# fixed in the original's train.py rather than config.py
PHASE2_ONE_CYCLE_EPOCHS = 5
LR_FALLBACK = 1e-4
VALID_PCT = 0.125  # fastai RandomSplitter(valid_pct=0.125, seed=SEED) inside the DataBlock
PATIENT_TEST_SIZE = 0.2  # train_test_split over patients, random_state=SEED
TEST_CHECKPOINT_VALID_PCT = 0.2  # test_checkpoint.py: RandomSplitter(0.2, seed 42)
TEST_CHECKPOINT_SEED = 42
