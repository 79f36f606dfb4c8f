"""What a checkpoint from the wild says beyond its weights: the layers it leaves out, and how it predicts noise.

Merge tools and pruning scripts drop layers SDXL does not read: CLIP-L's last layer and final norm, OpenCLIP's
last block, `ln_final`, `text_projection` and `logit_scale` (sd-mecha lists them as optional). diffusers then
leaves those parameters on the meta device and the first `.to()` fails. `complete` fills them so that the
model runs: SDXL's token embeddings come from the penultimate layers and are unchanged; the pooled embedding
needs OpenCLIP's last block, `ln_final` and `text_projection`, so without them it is made from the penultimate
layer (a pass-through block, a fresh norm, an identity projection), and a warning says so.

v-prediction SDXL files carry marker keys (`v_pred`, `ztsnr`, or `edm_vpred.sigma_min/max`); a checkpoint can
also get a same-name `.yaml` beside it, as in A1111 (`model.params.parameterization: "v"`, and Homegrown's
`zero_terminal_snr: true`). `prediction_of` reads both; the loaded model's scheduler config says the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError

log = logging.getLogger(__name__)

PART_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "CLIP-L text encoder",
              "text_encoder_2": "OpenCLIP text encoder"}
VAE_PREFIX = "first_stage_model."


def has_vae(tensor_names) -> bool:
    return any(name.startswith(VAE_PREFIX) for name in tensor_names)


def complete(pipe, filename: str, required: tuple[str, ...], encoders: tuple[str, ...]) -> list[str]:
    """Check that nothing loaded is missing; fill the text-encoder layers SDXL can do without.

    Raises UserError naming the part and a weight if a file lacks anything else. Returns warnings for the
    missing layers that change the result (those of the pooled embedding)."""
    warnings = []
    for part in required + encoders:
        module = getattr(pipe, part, None)
        if module is None:
            continue
        missing = [name for name, tensor in _tensors(module) if tensor.is_meta]
        if not missing:
            continue
        optional = _optional_names(module) if part in encoders else set()
        other = [name for name in missing if not any(name.startswith(o) for o in optional)]
        if other:
            raise UserError(f"{filename} is incomplete: its {PART_NAMES[part]} lacks {len(other)} weights (e.g. "
                            f"{other[0]}). Download it again or use another file", field="checkpoint")
        _fill(module, missing)
        what = _describe(module, missing)
        if part == "text_encoder_2" and any("position_ids" not in name for name in missing):
            warnings.append(f"{filename} has no {what} in its OpenCLIP text encoder: SDXL's pooled text embedding "
                            "is made without them (from the penultimate layer, unprojected), so images differ "
                            "from those of the complete model")
            log.warning(warnings[-1])
        else:
            log.info("%s has no %s in its %s; SDXL does not read them", filename, what, PART_NAMES[part])
    return warnings


def _tensors(module: torch.nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _optional_names(encoder) -> set[str]:
    """Name prefixes of the layers SDXL can do without: the last transformer layer, the final norm, the
    projection, the position ids (transformers 5 flattens CLIPTextModel: with or without `text_model.`)."""
    last = encoder.config.num_hidden_layers - 1
    names = set()
    for prefix in ("", "text_model."):
        names |= {f"{prefix}encoder.layers.{last}.", f"{prefix}final_layer_norm.", f"{prefix}embeddings.position_ids"}
    names.add("text_projection.")
    return names


def _fill(module: torch.nn.Module, names: list[str]) -> None:
    """A pass-through last layer (zero attention and MLP outputs around the residual), a plain norm, an
    identity projection."""
    for name in names:
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        old = getattr(owner, attribute)
        if attribute == "position_ids":
            value = torch.arange(old.shape[-1]).expand(tuple(old.shape)).to(old.dtype)
        elif owner_name.endswith("text_projection"):
            value = torch.eye(*old.shape, dtype=old.dtype)
        elif "layer_norm" in owner_name and attribute == "weight":
            value = torch.ones(old.shape, dtype=old.dtype)
        else:
            value = torch.zeros(old.shape, dtype=old.dtype)
        if attribute in owner._parameters:
            owner._parameters[attribute] = torch.nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[attribute] = value


def _describe(encoder, names: list[str]) -> str:
    last = encoder.config.num_hidden_layers - 1
    found = []
    for needle, words in ((f"layers.{last}.", f"last layer (layer {last})"), ("final_layer_norm.", "final norm"),
                          ("text_projection.", "text_projection"), ("position_ids", "position ids")):
        if any(needle in name for name in names):
            found.append(words)
    return ", ".join(found)


# ---- v-prediction --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """How the model's UNet predicts: epsilon (SDXL 1.0) or v, with or without zero-terminal-SNR training."""

    kind: str = "epsilon"  # diffusers' prediction_type: epsilon | v_prediction
    zero_terminal_snr: bool = False
    edm_sigmas: tuple[float, float] | None = None  # (sigma_min, sigma_max) of EDM v-prediction files
    source: str = ""  # where it was read, for messages: "the file's v_pred key", "x.yaml"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def scheduler_changes(self) -> dict:
        """The keys the denoise loop reads from `LoadedModel.scheduler_config`."""
        changes = {}
        if self.kind != "epsilon":
            changes["prediction_type"] = self.kind
        if self.zero_terminal_snr:
            changes["rescale_betas_zero_snr"] = True
        return changes

    def infotext(self) -> dict[str, str]:
        """A1111 writes its zero-terminal-SNR setting as "Noise Schedule"; the prediction gets a short key."""
        fields = {}
        if self.kind == "v_prediction":
            fields["Prediction"] = "v"
        if self.zero_terminal_snr:
            fields["Noise Schedule"] = "Zero Terminal SNR"
        return fields


V_MARKERS = ("v_pred", "ztsnr", "edm_vpred.sigma_min", "edm_vpred.sigma_max")


def prediction_of(path: Path, tensor_names, scheduler_config: dict) -> Prediction:
    """The prediction of a checkpoint: its scheduler config (diffusers folders carry one), then the file's
    marker keys, then a same-name .yaml beside it (the user's word wins). A broken .yaml is ignored with
    a warning."""
    kind = scheduler_config.get("prediction_type") or "epsilon"
    ztsnr = bool(scheduler_config.get("rescale_betas_zero_snr"))
    names = set(tensor_names)
    sources, edm = [], None
    if "v_pred" in names or any(n.startswith("edm_vpred.") for n in names):
        kind = "v_prediction"
        sources.append("the file's v_pred key" if "v_pred" in names else "the file's edm_vpred keys")
    if "ztsnr" in names:
        ztsnr = True
        sources.append("the file's ztsnr key")
    if "edm_vpred.sigma_min" in names and "edm_vpred.sigma_max" in names:
        edm = _edm_sigmas(path)
    settings, warnings = _yaml_settings(path.with_suffix(".yaml")) if path.is_file() else ({}, [])
    if "parameterization" in settings:
        kind = "v_prediction" if settings["parameterization"] == "v" else "epsilon"
        sources.append(path.with_suffix(".yaml").name)
    if "zero_terminal_snr" in settings:
        ztsnr = bool(settings["zero_terminal_snr"])
    return Prediction(kind, ztsnr, edm, ", ".join(sources), tuple(warnings))


def _edm_sigmas(path: Path) -> tuple[float, float] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return float(f.get_tensor("edm_vpred.sigma_min")), float(f.get_tensor("edm_vpred.sigma_max"))
    except Exception:  # a marker without a usable value: v-prediction still holds
        return None


def _yaml_settings(path: Path) -> tuple[dict, list[str]]:
    """`parameterization` and `zero_terminal_snr` from an A1111-style model .yaml (model.params or top level)."""
    if not path.is_file():
        return {}, []
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        message = f"{path.name} could not be read and is ignored: {str(err).splitlines()[0][:200]}"
        log.warning(message)
        return {}, [message]
    model = data.get("model") if isinstance(data, dict) else None
    found = {}
    for section in (data, model.get("params") if isinstance(model, dict) else None):
        if isinstance(section, dict):
            for key in ("parameterization", "zero_terminal_snr"):
                if key in section:
                    found[key] = section[key]
    if found.get("parameterization") not in (None, "v", "eps"):
        message = f"{path.name}: parameterization {found['parameterization']!r} is not \"v\" or \"eps\"; ignored"
        log.warning(message)
        found.pop("parameterization")
        return found, [message]
    return found, []
