"""A1111's `/sdapi/v1/img2img` request and txt2img's hires fix fields -> Homegrown requests: pure, no HTTP.

A1111's StableDiffusionImg2ImgProcessingAPI is its txt2img request plus the img2img fields, with the defaults of
its processing class (not of its page): `inpainting_fill` 0 (fill), `inpaint_full_res` true ("Only masked"),
`inpaint_full_res_padding` 0.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image

from ..errors import UserError
from ..hires import DEFAULT_UPSCALER, HiresParams
from ..img2img import Img2ImgParams
from . import convert
from .schemas import Txt2ImgRequest

# A1111's defaults for these, as its API reads an absent field.
API_DEFAULT_STRENGTH = 0.75


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[Any] | None = None
    resize_mode: int = 0
    denoising_strength: float | None = API_DEFAULT_STRENGTH
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


# img2img fields Homegrown does not have, with the values that mean "not used" in A1111.
UNSUPPORTED_IMG2IMG = {
    "latent_mask": ((None, ""), "a separate latent mask is not supported; send the mask in `mask`"),
    "mask_round": ((True,), "an unrounded (soft) latent mask is not supported"),
    "image_cfg_scale": ((None,), "image CFG scale belongs to instruct-pix2pix models, which Homegrown does not run"),
}


def img2img_plan(request: Img2ImgRequest, current_vae: str, default_format: str, loras=None,
                 styles=None) -> convert.Txt2ImgPlan:
    """The request as Homegrown runs it: txt2img's plan (prompt, size, sampler, checkpoint, saving) with the
    decoded init images and mask. UserError naming the field for what Homegrown cannot do."""
    if request.restore_faces:
        raise UserError("face restoration is not available in Homegrown", field="restore_faces")
    for name, (allowed, why) in UNSUPPORTED_IMG2IMG.items():
        if getattr(request, name) not in allowed:
            raise UserError(f"{why} (got {getattr(request, name)!r})", field=name)
    if not request.init_images:
        raise UserError("send at least one image (base64; a data: URL works too)", field="init_images")
    images = tuple(decode_image(data, f"init_images[{i}]" if len(request.init_images) > 1 else "init_images")
                   for i, data in enumerate(request.init_images))
    mask = decode_image(request.mask, "mask") if request.mask else None
    # Hires fix is a txt2img field: img2img requests ignore it, as A1111's img2img request has none.
    # Hires fix is a txt2img field: img2img requests ignore it, as A1111's img2img request has none. The script
    # "sd upscale" is read by `script`; the txt2img plan sees none.
    update = {"enable_hr": False, **({"script_name": None, "script_args": []} if script(request) else {})}
    plan = convert.txt2img_plan(request.model_copy(update=update), current_vae, default_format,
                                loras=loras, styles=styles)
    blur_x, blur_y = request.mask_blur_x, request.mask_blur_y
    if request.mask_blur is not None:
        blur_x = blur_y = request.mask_blur
    if request.inpainting_mask_invert not in (0, 1):
        raise UserError(f"must be 0 (inpaint masked) or 1 (inpaint not masked), got {request.inpainting_mask_invert}",
                        field="inpainting_mask_invert")
    spec = Img2ImgParams(
        init_images=images, mask=mask, resize_mode=request.resize_mode,
        denoising_strength=API_DEFAULT_STRENGTH if request.denoising_strength is None else request.denoising_strength,
        mask_blur_x=blur_x, mask_blur_y=blur_y, inpainting_fill=request.inpainting_fill,
        inpaint_full_res=request.inpaint_full_res, inpaint_full_res_padding=request.inpaint_full_res_padding,
        inpainting_mask_invert=bool(request.inpainting_mask_invert),
        initial_noise_multiplier=1.0 if request.initial_noise_multiplier is None else request.initial_noise_multiplier)
    params = plan.params.replace(img2img=spec, hires=None)
    return convert.Txt2ImgPlan(params, plan.output_format, plan.save, plan.restore_checkpoint)


def script(request: Img2ImgRequest, upscalers: list[str] | None = None):
    """A1111's "SD upscale" script (`script_name: "sd upscale"`) as an SdUpscale, or None. `upscalers`: the names
    an upscaler index counts in (the studio's, as GET /upscalers lists them)."""
    from ..sd_upscale import TITLE, from_script_args

    name = request.script_name
    if not isinstance(name, str) or name.strip().lower() != TITLE.lower():
        return None
    return from_script_args(request.script_args, upscalers)


def hires_from_request(request: Txt2ImgRequest) -> HiresParams | None:
    """txt2img's hires fix fields (`enable_hr` on) -> HiresParams; None when it is off."""
    if not request.enable_hr:
        return None
    if request.firstphase_width or request.firstphase_height:
        raise UserError("the old hires fix size fields are not supported: send width/height for the first pass and "
                        "hr_scale or hr_resize_x/y for the second", field="firstphase_width")
    checkpoint = request.hr_checkpoint_name
    return HiresParams(
        scale=request.hr_scale, resize_x=request.hr_resize_x, resize_y=request.hr_resize_y,
        upscaler=request.hr_upscaler or DEFAULT_UPSCALER, second_pass_steps=request.hr_second_pass_steps,
        denoising_strength=API_DEFAULT_STRENGTH if request.denoising_strength is None else request.denoising_strength,
        sampler_name=request.hr_sampler_name or None,
        scheduler=request.hr_scheduler if request.hr_scheduler not in (None, "", "Use same scheduler") else None,
        prompt=request.hr_prompt or "", negative_prompt=request.hr_negative_prompt or "",
        checkpoint=None if checkpoint in (None, "", "Use same checkpoint") else checkpoint)


def decode_image(data: Any, field: str) -> Image.Image:
    """A base64 image (or data: URL) -> a loaded PIL image; a UserError naming the field for anything else."""
    if not isinstance(data, str):
        raise UserError(f"must be a base64 image, got {type(data).__name__}", field=field)
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("is not valid base64", field=field) from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except Exception:  # PIL raises many types: cut short, not an image, a decompression bomb
        raise UserError("is not an image Homegrown can read (PNG, JPEG or WebP), or it is cut short",
                        field=field) from None
    return image


def answer_parameters(request: Img2ImgRequest) -> dict:
    """The request as A1111 echoes it: the images left out unless include_init_images."""
    echoed = request.model_dump()
    if not request.include_init_images:
        echoed["init_images"], echoed["mask"] = None, None
    return echoed
