"""What every trainer says when its backbone starts from random weights instead of a pretrained file.

One helper for all five trainers: a WARNING on the console, and the same sentence in the run's
``metrics.json`` under ``protocol.warnings`` (``FitConfig.warnings``; ``common.compare`` repeats it
beside the published numbers), so a run trained from scratch is never mistaken for a reproduction.
A path that is given but does not exist stays an error in each trainer (naming the flag and file).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

_logger = logging.getLogger(__name__)


def random_init_warning(flag: str, what: str, original: str, *, hint: str = "") -> str:
    """Log (WARNING) and return the sentence for a backbone built without pretrained weights.

    Args:
        flag: the flag or config key that takes the weights file (e.g. ``--finetune``).
        what: the network that starts from random weights (e.g. ``convnextv2_tiny``).
        original: the weights the original code starts from (e.g. ``torchvision ImageNet weights``).
        hint: what to download where, appended after a semicolon.
    """
    message = (f"no {flag} given: {what} starts from random weights, not from {original} as the original; "
               f"results are not comparable with the published ones" + (f"; {hint}" if hint else ""))
    _logger.warning("%s", message)
    return message


def add_protocol_warnings(metrics: MutableMapping[str, Any], warnings: Iterable[str]) -> MutableMapping[str, Any]:
    """Append ``warnings`` to ``metrics['protocol']['warnings']`` (created when absent), without duplicates."""
    warnings = list(warnings)
    if not warnings:
        return metrics
    protocol = metrics.get("protocol")
    if not isinstance(protocol, dict):
        protocol = metrics["protocol"] = {}
    recorded = protocol.setdefault("warnings", [])
    recorded.extend(w for w in warnings if w not in recorded)
    return metrics


# torchvision's published DenseNet files name the layers 'denselayer1.norm.1.weight'; torchvision renames
# them to 'denselayer1.norm1.weight' when it loads them (densenet._load_state_dict), and so do we
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def rename_torchvision_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """A torchvision ImageNet state dict with its DenseNet legacy key names made current (others unchanged)."""
    return {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
