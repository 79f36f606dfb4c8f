"""Prompt text -> SDXL conditioning tensors, through compel, in A1111 or compel syntax.

compel does the hard parts (both text encoders, pooled output, 77-token chunks for long prompts,
weights applied per token); A1111 syntax is parsed by `prompts.split_breaks` and handed to compel as
weighted fragments, since compel's own parser reads `(red:1.3)` as literal text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Conjunction, FlattenedPrompt

from . import prompts
from .prompts import SYNTAXES


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, 77*k, te1_width + te2_width)
    pooled: torch.Tensor  # (1, te2_projection)
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor
    te2_width: int

    def for_refiner(self) -> "Conditioning":
        """The refiner sees only the OpenCLIP half: compel builds each encoder's part separately."""
        return Conditioning(self.embeds[..., -self.te2_width:], self.pooled,
                            self.negative_embeds[..., -self.te2_width:], self.negative_pooled, self.te2_width)

    def repeat(self, n: int) -> "Conditioning":
        return Conditioning(self.embeds.repeat(n, 1, 1), self.pooled.repeat(n, 1),
                            self.negative_embeds.repeat(n, 1, 1), self.negative_pooled.repeat(n, 1), self.te2_width)


class PromptEncoder:
    def __init__(self, pipe, syntax: str = "a1111"):
        if syntax not in SYNTAXES:
            raise ValueError(f"prompt syntax must be one of {SYNTAXES}")
        self.syntax = syntax
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        self.compel_1 = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                               returned_embeddings_type=kind, truncate_long_prompts=False)
        self.compel_2 = Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                               returned_embeddings_type=kind, truncate_long_prompts=False, requires_pooled=True)
        self.te2_width = pipe.text_encoder_2.config.hidden_size

    def _parse(self, text: str) -> list[tuple[Conjunction, str]]:
        """compel's structure for each BREAK part of the text, with its plain words (for the pooled embedding).

        A trailing empty part is dropped: A1111 makes no chunk for it."""
        parts = None
        if self.syntax == "compel":
            try:
                parts = [(Compel.parse_prompt_string(part), part) for part in prompts.split_break_text(text)]
            except Exception:
                pass  # compel's parser can fail on odd input; read it as A1111 syntax instead
        if parts is None:
            parts = [(Conjunction([FlattenedPrompt(list(runs))]), "".join(t for t, _ in runs))
                     for runs in prompts.split_breaks(text)]
        return parts[:-1] if len(parts) > 1 and not parts[-1][1] else parts

    @torch.no_grad()
    def _encode_one(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Each BREAK part in chunks of its own, side by side; the pooled embedding is the first part's,
        as A1111 takes it from the first chunk."""
        embeds, pooled = [], None
        for conjunction, plain in self._parse(text):
            left, _, _ = self.compel_1.build_conditioning_tensor_for_conjunction(conjunction, return_tokenization=True)
            right, _, _ = self.compel_2.build_conditioning_tensor_for_conjunction(conjunction,
                                                                                  return_tokenization=True)
            embeds.append(torch.cat([left, right], dim=-1))
            if pooled is None:
                pooled = self.compel_2.conditioning_provider.get_pooled_embeddings([plain], device=self.compel_2.device)
        return torch.cat(embeds, dim=1), pooled

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str) -> Conditioning:
        embeds, pooled = self._encode_one(prompt)
        negative, negative_pooled = self._encode_one(negative_prompt)
        # Long prompts are chunked by 77 tokens; the shorter side is padded with empty chunks.
        if embeds.shape[1] != negative.shape[1]:
            empty, _ = self._encode_one("")
            target = max(embeds.shape[1], negative.shape[1])
            embeds, negative = _pad(embeds, empty, target), _pad(negative, empty, target)
        return Conditioning(embeds, pooled, negative, negative_pooled, self.te2_width)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.compel_1.conditioning_provider.tokenizer, text, self.syntax)


def count_tokens(tokenizer, text: str, syntax: str = "a1111") -> int:
    """Tokens a prompt uses (without start/end markers), for the UI's chunk counter. As in A1111, a BREAK
    fills up the chunk it ends: "a cat BREAK a dog" counts 75 + 2."""
    text = prompts.extract_lora_tags(text)[0]
    if syntax == "a1111":
        parts = ["".join(t for t, _ in part) for part in prompts.split_breaks(text)]
    else:
        parts = prompts.split_break_text(text)
    counts = [len(tokenizer(part, truncation=False, verbose=False).input_ids) - 2 for part in parts]
    return sum(max(1, -(-count // 75)) * 75 for count in counts[:-1]) + counts[-1]


def _pad(embeds: torch.Tensor, empty: torch.Tensor, target: int) -> torch.Tensor:
    while embeds.shape[1] < target:
        embeds = torch.cat([embeds, empty], dim=1)
    return embeds
