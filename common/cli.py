"""Small argparse helpers shared by the entry scripts."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_logger = logging.getLogger(__name__)

_TRUE = {"yes", "true", "t", "y", "1"}
_FALSE = {"no", "false", "f", "n", "0"}


def str2bool(value: str | bool) -> bool:
    """argparse type for true/false flags written with a value (``--dual_view true``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean (yes/true/t/y/1 or no/false/f/n/0), got '{value}'"
    )


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16).

    Without it (e.g. AVX2-only CPUs) bf16 autocast is emulated and several times slower than fp32.
    Linux: the CPU flags; elsewhere oneDNN's own bf16 check.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--amp`` ("none", "bf16", "fp16", "auto") on ``device``.

    CPU autocast is bf16 only: "fp16" on CPU becomes bf16 with a warning. "auto" picks bf16 on GPUs
    that support it, else fp16 (the behaviour of the DvXray original); on CPU it picks bf16 only where
    the CPU has native bf16 (:func:`cpu_has_native_bf16`), fp32 otherwise, and logs the choice.
    """
    amp = amp.lower()
    if amp in ("none", "off", "false", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if cpu_has_native_bf16():
            _logger.info("--amp auto: bf16 autocast (the CPU has native bf16)")
            return torch.bfloat16
        _logger.info("--amp auto: fp32 (this CPU has no native bf16, where bf16 autocast is slower than fp32)")
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            _logger.warning("fp16 autocast is not used on CPU; using bf16 instead")
            return torch.bfloat16
        return torch.float16
    raise ValueError(f"--amp: unknown value '{amp}' (choose from none, bf16, fp16, auto)")


AMP_CHOICES = ("auto", "none", "bf16", "fp16")


def add_amp_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str, bare: str | None = None,
                 help: str | None = None) -> None:
    """``--amp {auto,none,bf16,fp16}``: the autocast dtype of every trainer (resolved by :func:`resolve_amp`).

    Each script keeps its own default. ``bare``: the value of a bare ``--amp`` without a value (XMNet's
    original ``--amp`` switch means fp16 + GradScaler); None = a value is required.
    """
    if default not in AMP_CHOICES or (bare is not None and bare not in AMP_CHOICES):
        raise ValueError(f"add_amp_flag: default/bare must be one of {AMP_CHOICES}")
    kw: dict[str, Any] = {"nargs": "?", "const": bare} if bare is not None else {}
    text = help or "autocast: auto = bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; fp16 becomes bf16 on CPU"
    parser.add_argument("--amp", default=default, choices=AMP_CHOICES, help=f"{text} (default: {default})", **kw)


def add_compile_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--compile [true|false]``: torch.compile the training step and the evaluation forward (ours)."""
    parser.add_argument(
        "--compile", type=str2bool, nargs="?", const=True, default=False,
        help="torch.compile the training step (model + loss) and the evaluation forward; the first steps "
             "compile (minutes on a CPU, cached afterwards); not in the original (default: false)")


def _auto_bool(value: str) -> bool | None:
    return None if str(value).strip().lower() == "auto" else str2bool(value)


def add_channels_last_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--channels_last auto|true|false``: NHWC image batches (auto: under bf16 autocast on a CPU)."""
    parser.add_argument(
        "--channels_last", type=_auto_bool, default=None, metavar="{auto,true,false}",
        help="lay image batches out as NHWC (channels_last); auto = on under bf16 autocast on a CPU, where "
             "oneDNN's bf16 convolutions are much faster in NHWC; not in the original (default: auto)")


def warn_unused_flag(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, why: str) -> None:
    """Log a warning when a flag kept only for command-line compatibility is set to a non-default."""
    if getattr(args, name) != parser.get_default(name):
        _logger.warning("--%s is accepted for compatibility but %s", name, why)


# User-input problems (bad flag values, missing or malformed files, unsafe checkpoints) surface as
# ValueError / OSError subclasses with a message naming the flag, file or line at fault.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
# exit status of a refused input (the same as argparse's for a bad flag)
EXIT_REFUSED = 2


def run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Call an entry script's ``main(args)``; a user-input error or a non-finite loss ends the process
    with a one-line ``error: ...`` message instead of a traceback.

    Exit status: 2 for a refused input (bad flag value, missing/malformed/unsafe file, unwritable output
    folder: the ``USER_ERRORS``, as argparse uses 2 for bad flags), 1 for a training failure (non-finite
    loss). Set ``TRACEBACK=1`` in the environment to get the full traceback for debugging.
    """
    from common.engine import NonFiniteLossError

    try:
        return main(args)
    except (*USER_ERRORS, NonFiniteLossError) as exc:
        if os.environ.get("TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, NonFiniteLossError) else EXIT_REFUSED)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker (whose message embeds
    the worker's traceback), the original error's own message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, sep, message = last.partition(": ")
        return message if sep and name.split(".")[-1] == type(exc).__name__ else last
    return text
