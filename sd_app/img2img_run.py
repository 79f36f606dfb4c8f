"""img2img, inpainting and the hires pass on the model side: the init images as latents, the latent mask, the
upscale between passes, and the pipelines that run a pass from given latents.

The engine's plan stays one list of passes; this module gives a pass its starting point (`Init`, handed to the
denoise loop as an `engine.Start`) and turns latents into images and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import hires, img2img
from .img2img import Prepared

MAX_STRENGTH = 0.999  # A1111: int(min(strength, 0.999) * steps) steps run, from a noised init, never pure noise


@dataclass
class Init:
    """Where an img2img or inpaint pass starts, for one batch."""

    prepared: list[Prepared]  # one per image of the batch (the overlays that paste results back)
    latents: torch.Tensor  # the init images encoded (B, 4, h, w), with masked content applied
    mask: torch.Tensor | None = None  # (B, 1, H, W) 0/1 at pixel size, exactly the latent mask scaled by 8
    masked_latents: torch.Tensor | None = None  # a 9-channel UNet's masked-image conditioning
    latent_mask: torch.Tensor | None = None  # (B, 1, h, w): A1111's nmask, 1 where the image is repainted
    strength: float = MAX_STRENGTH
    noise_multiplier: float = 1.0

    @property
    def inpainting(self) -> bool:
        return self.mask is not None

    @property
    def image_cond(self) -> torch.Tensor | None:
        """A 9-channel UNet's extra input: cat(mask, masked-image latents), (B, 5, h, w)."""
        if self.masked_latents is None:
            return None
        return torch.cat([self.latent_mask.to(self.masked_latents), self.masked_latents], dim=1)


def prepare_images(params) -> list[Prepared]:
    """The request's init images at the working size (one per image of the batch), masks applied."""
    spec = params.img2img
    images = list(spec.init_images)
    images = images * params.batch_size if len(images) == 1 else images
    prepared_once: dict[int, Prepared] = {}
    out = []
    for image in images:  # the same image once: its preparation (blur, fill) is done once
        if id(image) not in prepared_once:
            prepared_once[id(image)] = img2img.prepare(image, spec.mask, params.width, params.height,
                                                       spec.resize_mode, spec.options)
        out.append(prepared_once[id(image)])
    return out


@torch.no_grad()
def encode(vae, images: list[Image.Image], device, dtype) -> torch.Tensor:
    """Images -> latents (the distribution's mean, so the same image always gives the same latents), in fp32
    when the VAE's config asks for it (SDXL's VAE overflows in fp16), scaled as the UNet sees them."""
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1)
                          .permute(2, 0, 1) for im in images]).to(device)
    wanted = torch.float32 if vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
    original = vae.dtype
    if original != wanted:
        vae.to(dtype=wanted)
    try:
        latents = torch.cat([vae.encode(pixels[i:i + 1].to(wanted)).latent_dist.mode() for i in range(len(images))])
    finally:
        if original != wanted:
            vae.to(dtype=original)
    return (latents * vae.config.scaling_factor).to(dtype)


def make_init(params, prepared: list[Prepared], vae, unet_channels: int, seeds: list[int], device, dtype) -> Init:
    """The batch's starting latents: encoded init images, resized in latent space for the latent resize mode,
    and inside the mask replaced as `inpainting_fill` says (A1111's latent noise / latent nothing)."""
    spec = params.img2img
    latents = encode(vae, [p.image for p in prepared], device, dtype)
    size = (params.height // 8, params.width // 8)
    if latents.shape[-2:] != size:  # "Just resize (latent upscale)": the latents are stretched, bilinear
        latents = torch.nn.functional.interpolate(latents.float(), size=size, mode="bilinear").to(dtype)
    init = Init(prepared, latents, strength=min(spec.denoising_strength, MAX_STRENGTH),
                noise_multiplier=spec.initial_noise_multiplier)
    if prepared[0].mask is None:
        return init
    small = torch.stack([torch.from_numpy(img2img.latent_mask(p.mask, size[1], size[0])) for p in prepared])
    small = small[:, None].to(device, dtype)  # 1 where the image is redrawn
    if spec.inpainting_fill == 2:  # latent noise: the masked latents are noise from each image's seed
        noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(s))
                             for s in seeds]).to(device, dtype)
        init.latents = latents * (1 - small) + noise * small
    elif spec.inpainting_fill == 3:  # latent nothing: zeros
        init.latents = latents * (1 - small)
    init.latent_mask = small
    init.mask = torch.nn.functional.interpolate(small.float(), scale_factor=8, mode="nearest").to(dtype)
    if unet_channels == 9:
        init.masked_latents = _masked_latents(vae, prepared, init.mask, device, dtype)
    return init


def txt2img_init(params, vae, seeds, device, dtype) -> Init:
    """txt2img on an inpainting base (A1111's txt2img_image_conditioning): a mid-grey image, all of it masked."""
    grey = Image.new("RGB", (params.width, params.height), (127, 127, 127))
    prepared = [Prepared(grey, None, None, None, [])] * len(seeds)
    latents = encode(vae, [grey], device, dtype).repeat(len(seeds), 1, 1, 1)
    mask = torch.ones((len(seeds), 1, params.height, params.width), device=device, dtype=dtype)
    init = Init(prepared, latents, None, _masked_latents(vae, prepared, mask, device, dtype), strength=1.0)
    init.latent_mask = torch.ones((len(seeds), 1, params.height // 8, params.width // 8), device=device, dtype=dtype)
    return init  # no `mask`: nothing to keep or paste back, the whole image is drawn


def _masked_latents(vae, prepared: list[Prepared], mask: torch.Tensor, device, dtype) -> torch.Tensor:
    """A 9-channel UNet's conditioning: the init image with the masked part blanked (0 in [-1, 1]), encoded."""
    blanked = []
    for p, m in zip(prepared, mask):
        pixels = np.asarray(p.image.convert("RGB"), dtype=np.float32)
        keep = (m[0].float().cpu().numpy() < 0.5)[..., None]
        blanked.append(Image.fromarray(np.where(keep, pixels, 127.5).round().astype(np.uint8)))
    return encode(vae, blanked, device, dtype)


def finish(images: list[Image.Image], init: Init | None) -> list[Image.Image]:
    """Inpainting: each result pasted back into its original through the blurred mask (A1111's apply_overlay)."""
    if init is None or not init.inpainting:
        return images
    return [img2img.apply_overlay(image, prepared) for image, prepared in zip(images, init.prepared)]


def model_upscaler(upscalers, job, limits):
    """`hires.upscale_image`'s `models` for an `upscalers.Upscalers` (None without one): a model upscaler by name,
    to the hires size; Lanczos for the rest of an interrupted upscale (the hires pass then stops there)."""
    if upscalers is None:
        return None

    def upscale_with_model(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        result = upscalers.upscale(image, name, size=(width, height), job=job, limits=limits, field="hr_upscaler")
        return result if result is not None else image.resize((width, height), Image.LANCZOS)
    return upscale_with_model


def upscale(latents: torch.Tensor, spec: hires.HiresParams, target: hires.Target, vae, decode, device, dtype,
            models=None) -> torch.Tensor:
    """The hires fix's upscale: latents interpolated (the Latent modes), or decoded, scaled as images by the
    upscaler and encoded again."""
    if spec.is_latent():
        return hires.upscale_latents(latents, spec.upscaler, target.width, target.height)
    images = [hires.upscale_image(image, spec.upscaler, target.width, target.height, models)
              for image in decode(vae, latents)]
    return encode(vae, images, device, dtype)


def infotext_fields(params) -> dict:
    """`Denoising strength` and A1111's img2img / hires keys after it (none for plain txt2img)."""
    if params.img2img is not None:
        return {"Denoising strength": params.img2img.denoising_strength, **params.img2img.infotext_fields()}
    if params.hires is not None:
        return {"Denoising strength": params.hires.denoising_strength, **params.hires.infotext_fields(
            params.prompt, params.negative_prompt, params.sampler_name, params.scheduler, params.refined)}
    return {}
