"""The two seed architectures in PyTorch, as the speed peer of vaejax (benchmarks/train_speed.py).

Same layers, initial-weight layout, loss and optimizer as vaejax.models / vaejax.losses, so a step
does the same arithmetic. TF's SAME padding is spelled out: a 4x4 stride-2 conv pads (1, 1), a 4x4
stride-1 conv pads (1, 2), and the stride-1 transposed conv (Flax ConvTranspose, SAME) is a conv
padded (2, 1): at stride 1 a transposed convolution is a convolution.
`load_flax_params` copies vaejax parameters in, for the same-function check.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXELS = 784


class PaddedConv(nn.Conv2d):
    """Conv2d with explicit TF-style (before, after) padding on both spatial axes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, pad: tuple[int, int]):
        super().__init__(in_channels, out_channels, 4, stride=stride)
        self.pad = (pad[0], pad[1], pad[0], pad[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


def flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
    """Flatten in Flax's (h, w, c) order, so dense weights mean the same in both frameworks."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 2, inputs_decoder: int = 49):
        super().__init__()
        self.side = int(inputs_decoder**0.5)
        self.encoder_convs = nn.ModuleList([
            PaddedConv(1, 64, 2, (1, 1)), PaddedConv(64, 64, 2, (1, 1)), PaddedConv(64, 64, 1, (1, 2))])
        self.mean = nn.Linear(7 * 7 * 64, latent_dim)
        self.std = nn.Linear(7 * 7 * 64, latent_dim)
        self.decoder_dense = nn.ModuleList([nn.Linear(latent_dim, inputs_decoder),
                                            nn.Linear(inputs_decoder, inputs_decoder)])
        self.decoder_convs = nn.ModuleList([
            PaddedConv(1, 64, 1, (2, 1)), PaddedConv(64, 64, 1, (2, 1)), PaddedConv(64, 64, 1, (2, 1))])
        self.hidden = nn.Linear(self.side * self.side * 64, PIXELS)
        self.logits = nn.Linear(PIXELS, PIXELS)
        for layer in self.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def encode(self, images: torch.Tensor):
        x = images
        for conv in self.encoder_convs:
            x = F.relu(conv(x))
        x = flatten_nhwc(x)
        return self.mean(x), F.softplus(self.std(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for layer in self.decoder_dense:
            x = F.relu(layer(x))
        x = x.reshape(-1, 1, self.side, self.side)
        for conv in self.decoder_convs:
            x = F.relu(conv(x))
        return self.logits(self.hidden(flatten_nhwc(x)))

    def forward(self, images: torch.Tensor, eps: torch.Tensor):
        mean, std = self.encode(images)
        return self.decode(mean + std * eps), mean, std


class DenseAE(nn.Module):
    def __init__(self, latent_dim: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(PIXELS, 32), nn.Linear(32, latent_dim),
                                     nn.Linear(latent_dim, 32), nn.Linear(32, PIXELS)])
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor, eps: torch.Tensor):
        x = images.reshape(images.shape[0], -1)
        for layer in self.layers[:3]:
            x = F.relu(layer(x))
            if layer is self.layers[1]:
                code = x
        return self.layers[3](x), code, None


def loss_terms(logits, images, mean, std):
    """Per-image BCE from logits summed over pixels, plus the Gaussian KL; batch means."""
    targets = images.reshape(images.shape[0], -1)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
    kl = torch.zeros_like(bce) if std is None else 0.5 * (mean**2 + std**2 - 2 * torch.log(std) - 1).sum(dim=1)
    return (bce + kl).mean(), bce.mean(), kl.mean()


def build(name: str) -> nn.Module:
    return {"conv_vae": ConvVAE, "dense_ae": DenseAE}[name]()


def flax_layer_pairs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(vaejax parameter path, PyTorch layer) for every layer with weights."""
    if isinstance(model, ConvVAE):
        return [
            *((f"encoder/Conv_{i}", conv) for i, conv in enumerate(model.encoder_convs)),
            ("encoder/mean", model.mean), ("encoder/std", model.std),
            *((f"decoder/Dense_{i}", dense) for i, dense in enumerate(model.decoder_dense)),
            *((f"decoder/ConvTranspose_{i}", conv) for i, conv in enumerate(model.decoder_convs)),
            ("decoder/Dense_2", model.hidden), ("decoder/Dense_3", model.logits),
        ]
    names = ["encoder/Dense_0", "encoder/Dense_1", "decoder/Dense_0", "decoder/Dense_1"]
    return list(zip(names, model.layers, strict=True))


def load_flax_params(model: nn.Module, params: dict) -> None:
    """Copy vaejax params (nested dicts of arrays) into the PyTorch model."""
    with torch.no_grad():
        for path, layer in flax_layer_pairs(model):
            part, name = path.split("/")
            kernel = np.array(params[part][name]["kernel"])
            torch_layout = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)  # (out, in, ...)
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(torch_layout)))
            layer.bias.copy_(torch.from_numpy(np.array(params[part][name]["bias"])))
