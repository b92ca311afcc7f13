"""Loss-to-attention signal channel.

The original keeps a process-global ``SignalBus(momentum=0.9)`` singleton: losses push statistics
(MCB-Convex pushes its class-weight vector as ``w_mcb``, FALS pushes ``difficulty``) and attention
modules (CoordAtt-U, CBAM-GE, ECA-DA) read them. Here the same behaviour lives in one explicit
``SignalChannel`` object that the model and the loss are both given at construction, so two models in
one process do not interfere and the state can be checkpointed (``state_dict``).

Bus semantics kept from the original: each name holds an EMA with momentum 0.9 whose first value is
copied as is; nothing is pushed during evaluation, so evaluation reads the last training value.
"""

from __future__ import annotations

from typing import Any

import torch


class SignalChannel:
    """Named EMA statistics shared between a loss (writer) and attention modules (readers).

    Args:
        momentum: EMA momentum m in ``v <- m * v + (1 - m) * new`` (the original bus uses 0.9).

    Deep copies return the same object: the EMA model copy must read the live channel, exactly as
    every model in the original process reads the one global bus.
    """

    def __init__(self, momentum: float = 0.9):
        self.momentum = float(momentum)
        self._values: dict[str, torch.Tensor] = {}

    def __deepcopy__(self, memo: dict) -> SignalChannel:
        return self

    def push(self, name: str, value: torch.Tensor) -> None:
        """EMA-update ``name`` with ``value`` (detached, float32); the first value is copied."""
        value = value.detach().float()
        old = self._values.get(name)
        if old is None or old.shape != value.shape:
            self._values[name] = value.clone()
        else:
            self._values[name] = self.momentum * old.to(value.device) + (1.0 - self.momentum) * value

    def get(self, name: str) -> torch.Tensor | None:
        """Current value of ``name``, or None before the first push."""
        return self._values.get(name)

    def clear(self) -> None:
        self._values.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "values": {k: v.detach().cpu().clone() for k, v in self._values.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = float(state["momentum"])
        self._values = {k: v.clone() for k, v in state["values"].items()}
