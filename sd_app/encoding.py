"""Prompt text -> SDXL conditioning tensors, through compel, in A1111 or compel syntax.

compel does the hard parts (both text encoders, pooled output, 77-token chunks for long prompts,
weights applied per token); A1111 syntax is parsed by `prompts.split_breaks` and handed to compel as
weighted fragments, since compel's own parser reads `(red:1.3)` as literal text.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Blend, Conjunction, FlattenedPrompt, Fragment

from . import prompts
from .errors import UserError
from .embedding_library import EmbeddingLibrary
from .prompts import SYNTAXES
from .textual_inversion import Substitution, keep_vectors_together, name_at, name_lookup


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, 77*k, te1_width + te2_width)
    pooled: torch.Tensor  # (1, te2_projection)
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor
    te2_width: int
    notes: tuple[str, ...] = ()  # for the user: prompt weights that were clamped
    largest_weight: float = 1.0  # the largest prompt weight used (in size), to name it if the image fails
    ti_hashes: str | None = None  # the infotext's `TI hashes` of the embeddings the prompts used

    def for_refiner(self) -> "Conditioning":
        """The refiner sees only the OpenCLIP half: compel builds each encoder's part separately."""
        return dataclasses.replace(self, embeds=self.embeds[..., -self.te2_width:],
                                   negative_embeds=self.negative_embeds[..., -self.te2_width:])

    def repeat(self, n: int) -> "Conditioning":
        return dataclasses.replace(self, embeds=self.embeds.repeat(n, 1, 1), pooled=self.pooled.repeat(n, 1),
                                   negative_embeds=self.negative_embeds.repeat(n, 1, 1),
                                   negative_pooled=self.negative_pooled.repeat(n, 1))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.embeds, self.pooled, self.negative_embeds, self.negative_pooled


class PromptEncoder:
    def __init__(self, pipe, syntax: str = "a1111"):
        if syntax not in SYNTAXES:
            raise ValueError(f"prompt syntax must be one of {SYNTAXES}")
        self.syntax = syntax
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        self.substitution = Substitution(pipe)  # textual inversion embeddings, named in prompts
        self.compel_1 = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                               returned_embeddings_type=kind, truncate_long_prompts=False,
                               textual_inversion_manager=self.substitution.managers[0])
        self.compel_2 = Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                               returned_embeddings_type=kind, truncate_long_prompts=False, requires_pooled=True,
                               textual_inversion_manager=self.substitution.managers[1])
        keep_vectors_together(self.substitution, self.compel_1.conditioning_provider,
                              self.compel_2.conditioning_provider)
        self.te2_width = pipe.text_encoder_2.config.hidden_size
        self._clip_l_layers: dict[int, Compel] = {}  # clip skip -> a CLIP-L compel that returns that layer

    def _clip_l(self, layer: int | None) -> Compel:
        """CLIP-L's compel for A1111's SDXL clip skip (`hidden_states[-layer]`); None, or 2, is SDXL's own
        penultimate layer."""
        if layer in (None, 2):
            return self.compel_1
        if layer not in self._clip_l_layers:
            encoder = self.compel_1.conditioning_provider.text_encoder
            most = encoder.config.num_hidden_layers
            if not isinstance(layer, int) or not 1 <= layer <= most:
                raise UserError(f"must be between 1 and {most} with Clip skip SDXL (this checkpoint's CLIP-L text "
                                f"encoder has {most} layers), got {layer!r}", field="clip_skip")
            compel = Compel(tokenizer=self.compel_1.conditioning_provider.tokenizer, text_encoder=encoder,
                            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                            truncate_long_prompts=False)
            provider = compel.conditioning_provider
            # compel picks the penultimate layer in this one method: the provider's own, for this layer
            provider._encode_token_ids_to_embeddings = functools.partial(_hidden_state, provider.text_encoder, layer)
            self._clip_l_layers[layer] = compel
        return self._clip_l_layers[layer]

    def _parse(self, text: str, weights: "_Weights") -> list[tuple[Conjunction, str]]:
        """compel's structure for each BREAK part of the text, with its plain words (for the pooled embedding),
        weights clamped to prompts.WEIGHT_RANGE.

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
        for conjunction, _ in parts:
            weights.clamp(conjunction)
        return parts[:-1] if len(parts) > 1 and not parts[-1][1] else parts

    @torch.no_grad()
    def _encode_one(self, text: str, weights: "_Weights | None" = None,
                    clip_l_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each BREAK part in chunks of its own, side by side; the pooled embedding is the first part's,
        as A1111 takes it from the first chunk."""
        embeds, pooled = [], None
        clip_l = self._clip_l(clip_l_layer)
        for conjunction, plain in self._parse(text, weights or _Weights("prompt")):
            left, _, _ = clip_l.build_conditioning_tensor_for_conjunction(conjunction, return_tokenization=True)
            right, _, _ = self.compel_2.build_conditioning_tensor_for_conjunction(conjunction,
                                                                                  return_tokenization=True)
            embeds.append(torch.cat([left, right], dim=-1))
            if pooled is None:
                pooled = self.compel_2.conditioning_provider.get_pooled_embeddings([plain], device=self.compel_2.device)
        return torch.cat(embeds, dim=1), pooled

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, embeddings: EmbeddingLibrary | None = None,
               clip_l_layer: int | None = None) -> Conditioning:
        """Both prompts' conditioning; the embeddings of `embeddings` that the prompts name replace their names.
        `clip_l_layer`: A1111's clip skip on SDXL with its "Clip skip SDXL" option (CLIP-L's
        hidden_states[-clip_l_layer]); None: SDXL's penultimate layer (A1111's default, whatever Clip skip says)."""
        with self.substitution.active(embeddings, "prompt"):
            weights = _Weights("prompt"), _Weights("negative_prompt")
            embeds, pooled = self._encode_one(prompt, weights[0], clip_l_layer)
            self.substitution.field = "negative_prompt"
            negative, negative_pooled = self._encode_one(negative_prompt, weights[1], clip_l_layer)
            ti_hashes = self.substitution.ti_hashes()
        return self._paired((embeds, pooled, weights[0]), (negative, negative_pooled, weights[1]), ti_hashes,
                            clip_l_layer)

    def _paired(self, positive, negative, ti_hashes: str | None, clip_l_layer: int | None = None) -> Conditioning:
        """One step's conditioning from each side's (embeds, pooled, weights). Long prompts are chunked by 77
        tokens; the shorter side is padded with empty chunks."""
        (embeds, pooled, weights), (negative_embeds, negative_pooled, negative_weights) = positive, negative
        if embeds.shape[1] != negative_embeds.shape[1]:
            empty, _ = self._encode_one("", clip_l_layer=clip_l_layer)
            target = max(embeds.shape[1], negative_embeds.shape[1])
            embeds, negative_embeds = _pad(embeds, empty, target), _pad(negative_embeds, empty, target)
        return Conditioning(embeds, pooled, negative_embeds, negative_pooled, self.te2_width,
                            notes=weights.notes + negative_weights.notes,
                            largest_weight=max(weights.largest, negative_weights.largest), ti_hashes=ti_hashes)

    @torch.no_grad()
    def encode_schedule(self, prompt: str, negative_prompt: str, steps: int,
                        embeddings: EmbeddingLibrary | None = None, most: int | None = None,
                        clip_l_layer: int | None = None) -> "PromptSchedule":
        """The conditioning of every step: A1111's prompt editing and alternation (`[a:b:0.5]`, `[a|b]`) make a
        prompt change during sampling. Each distinct prompt text is encoded once. `most` caps the distinct
        prompts of each side (Limits.max_prompt_schedules), checked before anything is encoded."""
        sides = {}
        for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            schedule = prompts.prompt_schedule(text, steps) if self.syntax == "a1111" else [(steps, text)]
            distinct = list(dict.fromkeys(part for _, part in schedule))
            if most is not None and len(distinct) > most:
                raise UserError(f"its prompt editing and alternation make {len(distinct)} different prompts over "
                                f"{steps} steps; at most {most} are allowed (Settings → Limits)", field=field)
            sides[field] = schedule
        encoded: dict[tuple[str, str], tuple] = {}
        with self.substitution.active(embeddings, "prompt"):
            for field, schedule in sides.items():
                self.substitution.field = field
                for _, text in schedule:
                    if (field, text) not in encoded:
                        weights = _Weights(field)
                        encoded[(field, text)] = (*self._encode_one(text, weights, clip_l_layer), weights)
            ti_hashes = self.substitution.ti_hashes()
        ends = sorted({end for schedule in sides.values() for end, _ in schedule})
        pairs: dict[tuple[str, str], Conditioning] = {}
        conds = []
        for end in ends:
            texts = tuple(schedule[prompts.schedule_index(schedule, end)][1] for schedule in sides.values())
            if texts not in pairs:
                pairs[texts] = self._paired(encoded[("prompt", texts[0])], encoded[("negative_prompt", texts[1])],
                                            ti_hashes, clip_l_layer)
            conds.append(pairs[texts])
        # What the user is told (clamped weights) and the largest weight (named if the image fails) cover the
        # whole schedule, whichever step's conditioning carries them.
        notes = tuple(dict.fromkeys(note for cond in pairs.values() for note in cond.notes))
        largest = max(cond.largest_weight for cond in pairs.values())
        whole = {id(cond): dataclasses.replace(cond, notes=notes, largest_weight=largest) for cond in pairs.values()}
        return PromptSchedule(ends, [whole[id(cond)] for cond in conds])

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.compel_1.conditioning_provider.tokenizer, text, self.syntax)


@dataclass
class PromptSchedule:
    """The conditioning over the steps of one request: entry i serves steps up to `ends[i]` (0-based step s takes
    the first entry whose end is >= s, as A1111's `reconstruct_cond_batch`). One entry without prompt editing."""

    ends: list[int]
    conds: list[Conditioning]

    def cond_at(self, step: int) -> Conditioning:
        return self.conds[prompts.schedule_index([(end, "") for end in self.ends], step)]

    @property
    def changes(self) -> bool:
        """Whether the conditioning changes during sampling."""
        return len({id(cond) for cond in self.conds}) > 1

    def _each(self, change) -> "PromptSchedule":
        done: dict[int, Conditioning] = {}  # entries that share a Conditioning keep sharing it
        for cond in self.conds:
            if id(cond) not in done:
                done[id(cond)] = change(cond)
        return PromptSchedule(list(self.ends), [done[id(cond)] for cond in self.conds])

    def repeat(self, n: int) -> "PromptSchedule":
        return self._each(lambda cond: cond.repeat(n))

    def for_refiner(self) -> "PromptSchedule":
        return self._each(Conditioning.for_refiner)


def _hidden_state(text_encoder, layer: int, token_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP-L's output `layer` layers from the end, without the final norm (A1111's sdxl_clip_l_skip)."""
    output = text_encoder(token_ids, attention_mask, output_hidden_states=True, return_dict=True)
    return output.hidden_states[-layer]


def count_tokens(tokenizer, text: str, syntax: str = "a1111", embeddings: dict[str, int] | None = None) -> int:
    """Tokens a prompt uses (without start/end markers), for the UI's chunk counter. As in A1111, a BREAK
    fills up the chunk it ends: "a cat BREAK a dog" counts 75 + 2, and an embedding's name counts as its vectors
    (`embeddings`: name -> vectors)."""
    text = prompts.extract_lora_tags(text)[0]
    if syntax == "a1111":
        parts = ["".join(t for t, _ in part) for part in prompts.split_breaks(text)]
    else:
        parts = prompts.split_break_text(text)
    names = {}
    if embeddings:
        ids = tokenizer(list(embeddings), add_special_tokens=False, truncation=False)["input_ids"]
        names = name_lookup(zip(ids, embeddings.values()))
    counts = [_counted(tokenizer(part, truncation=False, verbose=False).input_ids[1:-1], names) for part in parts]
    return sum(max(1, -(-count // 75)) * 75 for count in counts[:-1]) + counts[-1]


def _counted(token_ids: list[int], names: dict[int, list]) -> int:
    """Tokens of one BREAK-free part; an embedding that does not fit in what is left of a 75-token chunk starts
    the next one, as the encoder (and A1111) puts it there."""
    count, position = 0, 0
    while position < len(token_ids):
        match = name_at(token_ids, position, names)  # (a name's ids, its vectors): matched as the encoder does
        if match is None:
            count, position = count + 1, position + 1
            continue
        if count % 75 and count % 75 + match[1] > 75:
            count += 75 - count % 75
        count, position = count + match[1], position + len(match[0])
    return count


class _Weights:
    """Clamps the weights of one prompt's parsed structure to prompts.WEIGHT_RANGE, noting what it changed."""

    def __init__(self, field: str):
        self.field = field
        self.notes: tuple[str, ...] = ()
        self.largest = 1.0

    def clamp(self, node) -> None:
        if isinstance(node, Fragment):
            node.weight = self._clamped(node.weight, node.text)
        if isinstance(node, (Blend, Conjunction)):
            node.weights = [self._clamped(w, f"a .{type(node).__name__.lower()}()") for w in node.weights]
        for attribute in ("children", "prompts", "original", "edited"):  # compel's nodes hold others here
            for child in getattr(node, attribute, None) or ():
                self.clamp(child)

    def _clamped(self, weight: float, text: str) -> float:
        used = prompts.clamp_weight(weight)
        if used != weight:
            low, high = prompts.WEIGHT_RANGE
            words = text.strip()[:40] or "(empty)"
            self.notes += (f"{self.field}: the weight {weight:.3g} of {words!r} is outside {low:g} to {high:g}; "
                           f"{used:g} was used",)
        self.largest = max(self.largest, abs(used))
        return used


def _pad(embeds: torch.Tensor, empty: torch.Tensor, target: int) -> torch.Tensor:
    """`embeds` followed by empty chunks up to `target` tokens, in one concatenation: one at a time copied the
    growing tensor each time (quadratic: padding a negative prompt to 400 chunks took 74 s, to 3300 minutes)."""
    missing = (target - embeds.shape[1]) // empty.shape[1]
    return torch.cat([embeds] + [empty] * missing, dim=1) if missing > 0 else embeds
