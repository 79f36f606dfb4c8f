"""The training step: noise, timesteps, the UNet's prediction, the loss, the optimizer, the schedule.

Everything random is drawn from the run's own generator on the CPU (the data order from the seed and
the epoch), so a run is a function of its settings and data: the same seed gives the same LoRA bit for bit
on the CPU, and a run resumed from a saved state (adapter weights, optimizer, schedule, generator, step)
continues exactly as the unbroken run would.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F

from . import network
from .cache import Example, encode_text
from .config import TrainConfig

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, config: TrainConfig, pipe, examples: list[Example], repeats: list[int], device: torch.device,
                 precision: str, text_cache=None):
        """`examples` one per image, `repeats` how often each is seen an epoch; `text_cache(caption)` gives a
        caption's cached (embeds, pooled) when the text encoders are frozen."""
        from diffusers import DDPMScheduler

        self.config = config
        self.pipe = pipe
        self.examples = examples
        self.repeats = repeats
        self.device = device
        self.precision = precision  # "no", "fp16" or "bf16"
        self.text_cache = text_cache
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.models = {"unet": pipe.unet}
        if config.train_text_encoder:
            self.models.update(text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
        for frozen in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
            frozen.requires_grad_(False)
        network.add_lora(self.models, config.rank, config.alpha, config.seed, config.train_feed_forward,
                         config.train_conv)
        network.upcast_lora(self.models)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        self.notes: list[str] = []
        self.optimizer, self.optimizer_name = self._make_optimizer()
        self.lr_scheduler = self._make_schedule()
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self._epochs: dict[int, list[list[int]]] = {}  # the current epoch's batches only
        self._per_epoch: int | None = None

    # ---- set-up ----------------------------------------------------------------------------------

    def _make_optimizer(self):
        groups = [{"params": list(network.lora_parameters(self.pipe.unet).values()), "lr": self.config.learning_rate}]
        for name in ("text_encoder", "text_encoder_2"):
            if name in self.models:
                groups.append({"params": list(network.lora_parameters(self.models[name]).values()),
                               "lr": self.config.text_encoder_lr})
        if self.config.optimizer == "adamw8bit":
            optimizer = self._adamw8bit(groups)
            if optimizer is not None:
                return optimizer, "bitsandbytes.optim.AdamW8bit"
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay), "torch.optim.AdamW"

    def _adamw8bit(self, groups):
        why = None
        if self.device.type != "cuda":
            why = "it needs a CUDA GPU"
        else:
            try:
                import bitsandbytes
            except Exception as err:  # absent, or present without its CUDA library
                why = f"bitsandbytes cannot run here ({type(err).__name__}: {err}); pip install bitsandbytes"
        if why:
            self.notes.append(f"8-bit AdamW is not available ({why}): training with AdamW (more memory)")
            return None
        return bitsandbytes.optim.AdamW8bit(groups, weight_decay=self.config.weight_decay)

    def _make_schedule(self):
        from diffusers.optimization import get_scheduler

        name = self.config.lr_schedule
        if name == "constant" and self.config.warmup_steps:
            name = "constant_with_warmup"
        return get_scheduler(name, self.optimizer, num_warmup_steps=self.config.warmup_steps,
                             num_training_steps=self.config.max_steps)

    # ---- data order ------------------------------------------------------------------------------

    def batches_per_epoch(self) -> int:
        if self._per_epoch is None:
            self._per_epoch = len(self._epoch(0))
        return self._per_epoch

    def _epoch(self, number: int) -> list[list[int]]:
        """The epoch's batches: its images shuffled by (seed, epoch), then grouped by bucket (a batch is one size)."""
        if number not in self._epochs:
            seen = [i for i, n in enumerate(self.repeats) for _ in range(n)]
            order = torch.randperm(len(seen), generator=torch.Generator("cpu").manual_seed(
                self.config.seed * 1_000_003 + number)).tolist()
            by_bucket: dict[tuple, list[int]] = {}
            for position in order:
                index = seen[position]
                by_bucket.setdefault(tuple(self.examples[index].latents.shape), []).append(index)
            size = self.config.batch_size
            self._epochs = {number: [group[i:i + size] for group in by_bucket.values()
                                     for i in range(0, len(group), size)]}
        return self._epochs[number]

    def batch_at(self, step: int) -> list[int]:
        per_epoch = self.batches_per_epoch()
        return self._epoch(step // per_epoch)[step % per_epoch]

    # ---- one step --------------------------------------------------------------------------------

    def autocast(self):
        if self.precision == "no" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)

    def _conditioning(self, batch: list[Example]):
        captions = [example.caption for example in batch]
        if self.config.train_text_encoder:
            pipe = self.pipe
            return encode_text((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2),
                               captions, self.device)
        pairs = [self.text_cache(caption) for caption in captions]
        return (torch.stack([p[0] for p in pairs]).to(self.device), torch.stack([p[1] for p in pairs]).to(self.device))

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns its loss."""
        batch = [self.examples[i] for i in self.batch_at(self.step)]
        latents = torch.stack([e.latents for e in batch])
        noise = torch.randn(latents.shape, generator=self.generator)
        if self.config.noise_offset:
            noise = noise + self.config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=self.generator)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(batch),),
                                  generator=self.generator)
        latents, noise, timesteps = latents.to(self.device), noise.to(self.device), timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        time_ids = torch.stack([e.time_ids for e in batch]).to(self.device)
        for model in self.models.values():
            model.train()
        unet = self.pipe.unet
        with self.autocast():
            embeds, pooled = self._conditioning(batch)
            prediction = unet(noisy.to(unet.dtype), timesteps, embeds.to(unet.dtype),
                              added_cond_kwargs={"text_embeds": pooled.to(unet.dtype),
                                                 "time_ids": time_ids.to(unet.dtype)}).sample
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = (loss * self._snr_weights(timesteps)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        value = float(loss.detach().cpu())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {self.step}: lower the learning rate")
        self.losses.append(value)
        return value

    def _snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ (Hang et al. 2023): easy, low-noise steps stop dominating the loss."""
        gamma = self.config.min_snr_gamma
        if not gamma:
            return torch.ones(len(timesteps), device=timesteps.device)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps).float()
        weights = torch.clamp(snr, max=gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return weights / (snr + 1)
        return weights / snr

    # ---- saved state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"step": self.step, "lora": network.lora_state(self.models), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "losses": list(self.losses),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        network.load_lora_state(self.models, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = list(state.get("losses", []))
