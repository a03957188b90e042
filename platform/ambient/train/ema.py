"""Exponential moving average of the trained parameters (kept in fp32 beside the DeepSpeed engine)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.shadow = {
            name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad
        }
        if state is not None:
            missing = set(self.shadow) - set(state)
            if missing:
                raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
            self.shadow = {k: state[k].float().clone() for k in self.shadow}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))
