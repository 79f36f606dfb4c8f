"""Cheap live previews: SDXL latents -> RGB by a fixed linear map, no VAE involved (microseconds)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # the page imports this module for `enlarged` before torch is loaded (app.py: page first)
    import torch

# Least-squares fit of SDXL latent channels to RGB, as used by ComfyUI's "latent2rgb" previewer.
SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def latent_preview(latent: torch.Tensor) -> Image.Image:
    """One (4, h, w) latent -> a small RGB image at latent resolution (1/8 of the final size)."""
    import torch  # here, not at the top: see the import above
    factors = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = latent.detach().float().cpu().permute(1, 2, 0) @ factors + bias
    rgb = ((rgb + 1) / 2).clamp(0, 1).nan_to_num(0.0)
    return Image.fromarray((rgb.numpy() * 255).round().astype("uint8"))


PREVIEW_MAX_SIDE = 512  # px: big enough to judge a composition, small enough to send four times a second


def enlarged(preview: Image.Image, width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> Image.Image:
    """A latent-sized preview at the image's size, capped at `max_side`, for display: shown as it is, a
    256 px image's preview is a 32 px thumbnail. Bilinear, as the latent map is smooth: about a millisecond."""
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return preview if preview.size == size else preview.resize(size, Image.Resampling.BILINEAR)
