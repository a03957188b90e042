"""EDM-preconditioned denoiser for pixel-space and toy models: c_skip x + c_out F(c_in x, c_noise)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .conversions import edm_scalings


class EDMDenoiser(nn.Module):
    """Wraps a raw network ``net(x_scaled, c_noise[B], **cond)`` into a clean-sample predictor."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        c = edm_scalings(sigma, self.sigma_data)
        shape = (-1, *([1] * (x.ndim - 1)))
        f = self.net(x * c.c_in.reshape(shape), c.c_noise, **cond)
        return c.c_skip.reshape(shape) * x + c.c_out.reshape(shape) * f
