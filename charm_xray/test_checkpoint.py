"""Quick checkpoint evaluation (original: luythoangduy/CHARM-Xray ``test_checkpoint.py``).

    python test_checkpoint.py --checkpoint path/to/checkpoint                    # 100 sampled rows
    python test_checkpoint.py --checkpoint path/to/checkpoint --num_samples -1   # every row
    python test_checkpoint.py --checkpoint path/to/checkpoint --batch_size 64

Prints the overall ROC-AUC (sklearn macro), the mean class ROC-AUC, each class's AUC and the
timing; writes ``roc_curves.png`` and ``metrics.json`` to ``--output_dir``. Reads our checkpoints
(training checkpoints and ``models/*.pth``), a state dict of the original ``.py`` model, notebook
checkpoints (``model.`` prefix) and fastai ``{"model", "opt"}`` files, all with weights-only loading.

The default ``--split test_checkpoint`` is the original's own protocol: a RandomSplitter(0.2, seed
42) over the whole CSV, which can score images the model was trained on (quirk 21); ``--split
charm_notebook`` scores the notebooks' 12.5 % test subset, ``--split official`` the official test
list (``--num_samples`` then subsamples that set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charm_xray import config  # noqa: E402
from charm_xray.models.chest_xray_model import MODEL_NAMES  # noqa: E402
from common.cli import add_amp_flag, run_main  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("CHARM-Xray checkpoint test", add_help=False)
    parser.add_argument("--checkpoint", required=True, help="checkpoint path")
    parser.add_argument("--batch_size", default=config.BATCH_SIZE["test"], type=int, help="batch size (default: 32)")
    parser.add_argument("--num_samples", default=100, type=int,
                        help="rows sampled from Data_Entry (random_state 42); -1 = all (default: 100)")
    parser.add_argument("--split", default="test_checkpoint", choices=["test_checkpoint", "charm_notebook", "official"],
                        help="which images are scored (default: test_checkpoint, the original's; see the docstring)")
    parser.add_argument("--data_dir", default="data", help="ChestX-ray14 folder (default: data)")
    parser.add_argument("--output_dir", default=None,
                        help="where roc_curves.png and metrics.json go (default: <checkpoint>_test/)")
    parser.add_argument("--model_name", default=None, choices=MODEL_NAMES,
                        help="default: the checkpoint's recorded --model_name, else efficientnet_b0")
    parser.add_argument("--image_size", default=None, type=int, help="default: the checkpoint's, else 224")
    parser.add_argument("--retrieval_k", default=None, type=int,
                        help="memory retrieval k (default: the checkpoint's, else 3; the notebooks' best used 5)")
    parser.add_argument("--seed", default=config.SEED, type=int, help="seed of the charm_notebook split (default: 85)")
    parser.add_argument("--device", default=config.DEVICE, help="cuda or cpu")
    add_amp_flag(parser, default="none", help="autocast")
    parser.add_argument("--num_workers", default=2, type=int, help="loader workers (default: 2)")
    return parser


def main(args: argparse.Namespace) -> dict:
    from charm_xray.evaluate import main as evaluate_main

    return evaluate_main(args)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(parents=[get_args_parser()], description=__doc__.split("\n\n")[0])
    _args = _parser.parse_args()
    if _args.batch_size < 1:
        _parser.error(f"--batch_size must be >= 1, got {_args.batch_size}")
    run_main(main, _args)
