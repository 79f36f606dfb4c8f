"""Building diffusers pipelines from files on disk, with no network at all.

Single-file SDXL checkpoints carry weights but no configs; diffusers would fetch those from the hub.
Homegrown ships them in sd_app/configs (the configs of stabilityai's SDXL 1.0 base and refiner, and of
the tiny demo models) together with CLIP's tokenizer files, and passes them in explicitly.
"""

from __future__ import annotations

import functools
import gc
import warnings
from pathlib import Path

import torch

from . import checkpoint_traits
from .errors import UserError
from .models import KIND_LABELS, SUPPORTED_TEXT, Checkpoint, read_header, kind_of

CONFIGS_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "clip-tokenizer"
DEFAULT_CONFIGS = {"sdxl-base": "sdxl-base", "sdxl-refiner": "sdxl-refiner"}
INPAINT_SUFFIX = "-inpaint"  # the config set of an inpainting base: the same, with a 9-channel UNet input
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def is_inpainting(tensors: dict) -> bool:
    """An SDXL inpainting base (e.g. sd_xl_base_1.0_inpainting_0.1): its UNet takes 9 channels (latents, mask,
    masked image) instead of 4, seen in the first convolution's shape."""
    shape = tensors.get(UNET_INPUT_KEY, {}).get("shape") or []
    return len(shape) == 4 and shape[1] == 9


def load_tokenizers():
    """SDXL's two CLIP tokenizers: the same vocabulary; the second pads with "!" (OpenCLIP's pad id 0)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=77, pad_token="!")
    return tokenizer, tokenizer_2


def config_folder(kind: str, metadata: dict[str, str], inpainting: bool = False) -> Path:
    """The shipped config set for a file: the one its metadata names (demo models), else by kind."""
    named = metadata.get("homegrown.config")
    if named and (CONFIGS_DIR / named / "model_index.json").is_file() and "/" not in named and ".." not in named:
        return CONFIGS_DIR / named
    return CONFIGS_DIR / (DEFAULT_CONFIGS[kind] + (INPAINT_SUFFIX if inpainting else ""))


def check_kind(checkpoint: Checkpoint, wanted: str) -> str:
    field = "refiner_checkpoint" if wanted == "sdxl-refiner" else "checkpoint"
    try:
        kind = checkpoint.kind()
    except UserError as err:  # a damaged file: the message names it, the field says which choice it was
        raise UserError(err.message, field=field, status=err.status) from None
    if kind not in ("sdxl-base", "sdxl-refiner"):
        raise UserError(f"{checkpoint.filename} is {KIND_LABELS[kind]}. {SUPPORTED_TEXT}.", field="checkpoint")
    if kind != wanted:
        raise UserError(f"{checkpoint.filename} is {KIND_LABELS[kind]}, but {KIND_LABELS[wanted]} is needed here",
                        field=field)
    return kind


def load_base(checkpoint: Checkpoint, dtype: torch.dtype, vae_file: Path | None = None):
    """A StableDiffusionXLPipeline on the CPU, from a single file or a diffusers folder.

    `vae_file` is the VAE chosen in the settings: a file without a VAE of its own loads with it, and is
    refused (naming what it lacks) without one. Text-encoder layers SDXL can do without may be missing
    (`checkpoint_traits.complete_text_encoders`); their absence is logged and kept in `pipe.homegrown_warnings`.
    """
    from diffusers import StableDiffusionXLPipeline

    check_kind(checkpoint, "sdxl-base")
    with _quiet():
        if checkpoint.is_folder:
            return _guard(checkpoint, lambda: StableDiffusionXLPipeline.from_pretrained(
                str(checkpoint.path), torch_dtype=dtype, local_files_only=True))
        tokenizer, tokenizer_2 = load_tokenizers()
        header = read_header(checkpoint.path)
        config = config_folder("sdxl-base", header.metadata, is_inpainting(header.tensors))
        extra = {}
        if not checkpoint_traits.has_vae(header.tensors):
            if vae_file is None:
                raise UserError(f"{checkpoint.filename} has no VAE baked in (no first_stage_model.* weights): choose "
                                "a VAE file in Settings → VAE (e.g. sdxl_vae.safetensors) to use it",
                                field="checkpoint")
            extra["vae"] = load_vae(vae_file, dtype)
        pipe = _guard(checkpoint, lambda: StableDiffusionXLPipeline.from_single_file(
            str(checkpoint.path), config=str(config), local_files_only=True, torch_dtype=dtype,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, **extra))
        pipe.homegrown_warnings = checkpoint_traits.complete(pipe, checkpoint.filename, ("unet", "vae"),
                                                            ("text_encoder", "text_encoder_2"))
        return pipe


def load_refiner(checkpoint: Checkpoint, dtype: torch.dtype, base=None):
    """A StableDiffusionXLImg2ImgPipeline that shares the base's OpenCLIP encoder and VAE when given one.

    SDXL's refiner was trained with the same OpenCLIP ViT-bigG encoder and VAE as the base, so one copy
    of each serves both (about 1.5 GB less in fp16).
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    check_kind(checkpoint, "sdxl-refiner")
    shared = {}
    if base is not None:
        shared = {"text_encoder_2": base.text_encoder_2, "vae": base.vae, "tokenizer_2": base.tokenizer_2}
    with _quiet():
        if checkpoint.is_folder:
            return _guard(checkpoint, lambda: StableDiffusionXLImg2ImgPipeline.from_pretrained(
                str(checkpoint.path), torch_dtype=dtype, local_files_only=True, **shared))
        if "tokenizer_2" not in shared:
            shared["tokenizer_2"] = load_tokenizers()[1]
        config = config_folder("sdxl-refiner", read_header(checkpoint.path).metadata)
        pipe = _guard(checkpoint, lambda: StableDiffusionXLImg2ImgPipeline.from_single_file(
            str(checkpoint.path), config=str(config), local_files_only=True, torch_dtype=dtype,
            text_encoder=None, tokenizer=None, **shared))
        own = () if "text_encoder_2" in shared else ("text_encoder_2",)
        pipe.homegrown_warnings = checkpoint_traits.complete(pipe, checkpoint.filename, ("unet", "vae"), own)
        return pipe


def load_vae(path: Path, dtype: torch.dtype):
    """A standalone SDXL VAE file (e.g. sdxl_vae.safetensors or an fp16-fix VAE), offline."""
    from diffusers import AutoencoderKL

    header = read_header(path)
    kind = kind_of(header.tensors)
    if kind != "vae":
        raise UserError(f"{path.name} is {KIND_LABELS[kind]}, not a VAE", field="sd_vae")
    config = config_folder("sdxl-base", header.metadata)
    vae = _guard(Checkpoint(path.stem, path), lambda: AutoencoderKL.from_single_file(
        str(path), config=str(config), subfolder="vae", local_files_only=True, torch_dtype=dtype))
    # A chosen VAE decodes in the model's precision first (fp16-fix VAEs are made for it); a NaN result is
    # still redone in fp32 by the engine.
    vae.register_to_config(force_upcast=False)
    return vae


class CheckpointWeights:
    """The UNet's original weights, read back from its checkpoint file on demand.

    Undoing a fused LoRA must give back the exact original bits; the file has them, so no copy needs
    to be kept in RAM. Names are diffusers' (`down_blocks.1...to_q.weight`). The name mapping is worked
    out on first use, so loading a checkpoint pays nothing for it.
    """

    def __init__(self, checkpoint: Checkpoint, unet_config: dict):
        self.checkpoint = checkpoint
        self.unet_config = dict(unet_config)
        self.path = (checkpoint.path / "unet" / "diffusion_pytorch_model.safetensors" if checkpoint.is_folder
                     else checkpoint.path)

    @functools.cached_property
    def _file_names(self) -> dict[str, str] | None:
        """diffusers name -> name in the file; None for diffusers folders, whose names are the same."""
        from . import ldm_format

        if self.checkpoint.is_folder:
            return None
        names = [n for n in read_header(self.path).tensors if n.startswith(ldm_format.UNET_PREFIX)]
        return _diffusers_unet_names(names, self.unet_config)

    def holds(self, names: list[str]) -> bool:
        if not self.path.is_file():
            return False
        return self._file_names is None or all(name in self._file_names for name in names)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        mapping = self._file_names
        with safe_open(str(self.path), framework="pt") as f:
            return {name: f.get_tensor(mapping[name] if mapping is not None else name) for name in names}


def _diffusers_unet_names(ldm_names: list[str], config: dict) -> dict[str, str]:
    """diffusers UNet parameter name -> its name in the single file, from the same mapping the demo writer uses."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from . import ldm_format

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    names = {name: None for name in unet.state_dict()}
    mapping = dict(zip(names, ldm_format.unet_to_ldm(names, config)))
    present = set(ldm_names)
    return {ours: theirs for ours, theirs in mapping.items() if theirs in present}


def _guard(checkpoint: Checkpoint, load):
    """Turn the many ways a damaged or mismatched file fails inside diffusers into one readable error."""
    try:
        return load()
    except UserError:
        raise
    except (torch.OutOfMemoryError, MemoryError):
        gc.collect()
        raise UserError(f"not enough memory to load {checkpoint.filename}; close other programs or choose a "
                        "memory-saving mode in Settings", status=507) from None
    except Exception as exc:  # diffusers raises ValueError, KeyError, RuntimeError, SafetensorError...
        gc.collect()
        raise UserError(f"could not load {checkpoint.filename}: the file looks damaged or is not a standard SDXL "
                        f"checkpoint ({type(exc).__name__}: {str(exc)[:300]})", field="checkpoint") from exc


class _quiet(warnings.catch_warnings):
    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore")
        return self
