"""Non-invertible comparator behind the same interface as IRAE."""

from __future__ import annotations

import torch
from torch import nn

from .config import CNNConfig


class ResidualCNN(nn.Module):
    """conv-ReLU, (depth-2) x conv-ReLU, conv; predicts the residual (DnCNN without BN)."""

    invertible = False
    size_multiple = 1
    is_initialized = True

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config.channels, config.width
        layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(config.depth - 2):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(w, c, 3, padding=1))
        self.body = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(config.seed)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / (m.weight[0].numel())) ** 0.5)
                    m.bias.zero_()
        with torch.no_grad():
            self.body[-1].weight.mul_(0.1)

    def initialize(self, degraded: torch.Tensor, clean: torch.Tensor, *, start: str = "data") -> None:
        """Nothing is data-dependent here; present so training treats every model alike."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.body(y)
