"""The one network every trained variant uses: an MLP on x and features of c_noise, inside EDMDenoiser."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ambient.core import EDMDenoiser

from .config import Config, NoiseEmbedding


class MLP(nn.Module):
    """F(x_scaled, c_noise): an MLP on the input concatenated with features of c_noise (``embedding``:
    see Config.noise_embedding; "fourier", the default, is the network every published row used)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        depth: int,
        freqs: int = 8,
        embedding: NoiseEmbedding = "fourier",
    ) -> None:
        super().__init__()
        self.embedding = embedding
        count = min(freqs, 3) if embedding == "smooth" else freqs
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(count, dtype=torch.float32) / 4)
        emb = 2 * count + (1 if embedding == "smooth" else 0)
        extra = emb if embedding == "fourier_every_layer" else 0
        layers: list[nn.Module] = []
        width = dim + emb
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            width = hidden + extra
        self.hidden_layers = nn.ModuleList(layers)
        self.out = nn.Linear(width, dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        c = c_noise.reshape(-1, 1)
        angles = c * self.freqs
        feats = [angles.sin(), angles.cos()] + ([c] if self.embedding == "smooth" else [])
        e = torch.cat(feats, dim=1)
        h = torch.cat([x, e], dim=1)
        for layer in self.hidden_layers:
            h = self.act(layer(h))
            if self.embedding == "fourier_every_layer":
                h = torch.cat([h, e], dim=1)
        return self.out(h)


def make_denoiser(cfg: Config) -> EDMDenoiser:
    net = MLP(cfg.dim, cfg.hidden, cfg.depth, cfg.noise_freqs, cfg.noise_embedding)
    return EDMDenoiser(net, sigma_data=cfg.sigma_data)
