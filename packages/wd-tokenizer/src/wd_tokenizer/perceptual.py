"""Perceptual losses: LPIPS (VGG16) from weights the user supplies, and a download-free SSIM substitute."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wd_tokenizer.io import read_tensors
from wd_tokenizer.metrics import structural_similarity

# torchvision's VGG16 `features` layout (conv widths, "M" = max-pool), so its state dict loads by index.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# LPIPS reads relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3: the ReLUs at these `features` indices.
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_WIDTHS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS-VGG distance of float (B, 3, H, W) images in [0, 1] -> (B,); frozen, built from user-supplied weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_WIDTHS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, vgg_path: str | Path, lpips_path: str | Path) -> LPIPS:
        """torchvision `vgg16` weights (`features.*`) + the `lpips` package's `vgg.pth` (`lin{k}.model.1.weight`)."""
        vgg = {k: v for k, v in read_tensors(vgg_path).items() if k.startswith("features.")}
        lins = {k.replace("lin", "lins.", 1).replace(".model.1.", "."): v for k, v in read_tensors(lpips_path).items()}
        model = cls()
        missing, unexpected = model.load_state_dict(vgg | lins, strict=False)
        missing = [k for k in missing if k not in ("shift", "scale")]
        if missing or unexpected:
            raise KeyError(f"LPIPS weights do not match: missing {missing}, unexpected {unexpected}")
        return model.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = ((t * 2.0 - 1.0 - self.shift) / self.scale for t in (x, y))
        distance = x.new_zeros(x.shape[0])
        tap = 0
        for index, layer in enumerate(self.features[: LPIPS_TAPS[-1] + 1]):
            x, y = layer(x), layer(y)
            if index in LPIPS_TAPS:
                nx = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                distance = distance + self.lins[tap]((nx - ny).pow(2)).mean(dim=(1, 2, 3))
                tap += 1
        return distance


def ssim_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of float (B, 3, H, W) images in [0, 1]: the default perceptual term, needing no weights."""
    return 1.0 - structural_similarity(reconstruction, target)
