"""Batch-level data augmentation on tensors (no torchvision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                *, mode: str = "replicate") -> torch.Tensor:
    """Pad each image by ``padding`` pixels and crop it back at a random offset.

    Args:
        images: ``[N, C, H, W]`` float tensor.
        padding: pixels added on each side (0 returns ``images`` unchanged).
        generator: source of the per-image offsets (seeded for determinism).
        mode: ``F.pad`` mode for the border (``"replicate"`` keeps backgrounds uniform,
            ``"constant"`` pads with zeros).

    Returns:
        A new ``[N, C, H, W]`` tensor; every image is shifted by up to ``padding`` pixels.
    """
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode=mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]   # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]   # [N, 1, 1, W]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(c)[None, :, None, None]
    return padded[batch, chans, rows, cols]
