"""VQGAN training losses: L1 (+ L2), perceptual, quantizer, and a PatchGAN hinge loss with taming's adaptive weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wd_tokenizer.model import VQGANOutput
from wd_tokenizer.perceptual import LPIPS, ssim_loss


@dataclass
class LossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.2  # LPIPS when both weight paths are given, else 1 - SSIM
    quantizer_weight: float = 1.0
    disc_weight: float = 0.8
    disc_start: int = 10_000  # optimizer step from which the GAN terms are on
    disc_channels: int = 64
    disc_layers: int = 3
    lpips_vgg_path: str | None = None  # torchvision vgg16 state dict
    lpips_path: str | None = None  # the `lpips` package's weights/v0.1/vgg.pth


class PatchDiscriminator(nn.Module):
    """taming's PatchGAN (pix2pix NLayerDiscriminator): pixels (B, 3, H, W) in [0, 1] -> logits (B, 1, h', w')."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            blocks += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels * 2.0 - 1.0)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's balance: |grad nll| / |grad gan| at the decoder's last layer, so neither term drowns the other."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VQGANLoss(nn.Module):
    """Generator and discriminator objectives; owns the discriminator and the (frozen) perceptual network."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers)
        paths = (config.lpips_vgg_path, config.lpips_path)
        if any(paths) and not all(paths):
            raise ValueError("LPIPS needs both lpips_vgg_path and lpips_path")
        self.lpips = LPIPS.from_files(*paths) if all(paths) else None

    def perceptual(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.lpips is not None:
            return self.lpips(reconstruction, target).mean()
        return ssim_loss(reconstruction, target)

    def generator_loss(
        self, pixels: torch.Tensor, output: VQGANOutput, last_layer: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total generator loss for float pixels (B, 3, H, W) in [0, 1] and the model's output; plus log values."""
        c = self.config
        recon = output.reconstruction.float()
        l1, l2 = F.l1_loss(recon, pixels), F.mse_loss(recon, pixels)
        perceptual = self.perceptual(recon, pixels)
        nll = c.l1_weight * l1 + c.l2_weight * l2 + c.perceptual_weight * perceptual
        loss = nll + c.quantizer_weight * output.quantizer_loss.float()
        logs = {"l1": l1.item(), "l2": l2.item(), "perceptual": perceptual.item(),
                "quantizer": output.quantizer_loss.item()}
        if step >= c.disc_start:
            gan = -self.discriminator(recon).mean()
            weight = adaptive_weight(nll, gan, last_layer) * c.disc_weight
            loss = loss + weight * gan
            logs |= {"gan": gan.item(), "gan_weight": weight.item()}
        return loss, logs

    def discriminator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Hinge loss of real pixels against detached reconstructions, both (B, 3, H, W) in [0, 1]."""
        return hinge_discriminator_loss(self.discriminator(pixels), self.discriminator(reconstruction.detach().float()))
