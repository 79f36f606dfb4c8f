"""The noise every image starts from, and the noise samplers add per step: drawn as AUTOMATIC1111 draws it.

A1111's "Random number generator source" (infotext key `RNG`) picks where seeds' noise comes from:
- `GPU` (A1111's default): the GPU's own generator. The same seed gives other noise on a CPU, so a picture
  made on an NVIDIA card could not be remade without one. Here, without CUDA, `GPU` is drawn by `NV` below,
  which gives exactly the numbers a CUDA card gives: an infotext pasted from civitai (most are `GPU`, written
  without an `RNG` key) makes the same noise on a laptop's CPU as on the card that made it.
- `CPU`: torch's CPU generator: the same on every machine, but not what a CUDA card draws.
- `NV`: A1111's CPU re-implementation of the Philox 4x32-10 generator behind `torch.randn(device="cuda")`,
  with CUDA's Box-Muller step: a CUDA card's noise on any device.

Variation seeds (`subseed`, `subseed_strength`: the two noises slerped) and "Resize seed from" (the noise of
another size, centred) follow A1111's modules/rng.py, so its infotexts reproduce here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np  # gradio's own dependency: present whenever the page is

from .errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported where noise is drawn, not here: requests are checked (params.py reads SOURCES) while the
# model stack is still importing at start-up.

SOURCES = ("GPU", "CPU", "NV")  # A1111's names and order; "GPU" is its default
DEFAULT_SOURCE = "GPU"


def check_source(name) -> str:
    """A1111's source name for `name` (any case), or a UserError naming the choices."""
    if isinstance(name, str):
        for source in SOURCES:
            if name.strip().upper() == source:
                return source
    raise UserError(f"must be one of {', '.join(SOURCES)}, got {name!r}", field="randn_source")


# ---- Philox 4x32-10, as cuRAND runs it for torch.randn on CUDA ---------------------------------------------

_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
# Box-Muller's scale factors, rounded to float32 as cuRAND's are; the products below are then taken in float64
# (uint32 x float32 promotes there in numpy), which is what makes the last bits agree with a CUDA card.
_TWO_POW32_INV = np.array([2.3283064e-10], dtype=np.float32)
_TWO_POW32_INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def _halves(values: np.ndarray) -> np.ndarray:
    """(N,) uint64 -> (2, N) uint32: row 0 the low 32 bits, row 1 the high."""
    return values.view(np.uint32).reshape(-1, 2).transpose(1, 0)


def _philox(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox 4x32 on (4, N) counters and (2, N) keys, in place; returns the counters."""
    for number in range(rounds):
        low = _halves(counter[0].astype(np.uint64) * _MULTIPLIERS[0])
        high = _halves(counter[2].astype(np.uint64) * _MULTIPLIERS[1])
        counter[0] = high[1] ^ counter[1] ^ key[0]
        counter[1] = high[0]
        counter[2] = low[1] ^ counter[3] ^ key[1]
        counter[3] = low[0]
        if number + 1 < rounds:
            key[0] = key[0] + _KEY_STEPS[0]
            key[1] = key[1] + _KEY_STEPS[1]
    return counter


class PhiloxGenerator:
    """`torch.randn(shape, device="cuda")` after `torch.manual_seed(seed)`, computed on the CPU (A1111's `NV`).

    Each draw moves the offset by one, as a CUDA generator's does for one randn call; numbers within a draw are
    consecutive Philox counters. Up to 2**32 numbers per draw."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> torch.Tensor:
        count = int(np.prod(shape))
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        self.offset += 1
        key = _halves(np.full(count, self.seed % 2**64, dtype=np.uint64)).copy()
        bits = _philox(counter, key)
        # Box-Muller: cuRAND keeps only the first of the pair for randn.
        u = bits[0] * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = bits[1] * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        normal = (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
        import torch

        return torch.from_numpy(normal.reshape(tuple(shape)))


# ---- drawing -----------------------------------------------------------------------------------------------


class _Draws:
    """Where one source draws for one device: fresh generators per seed, each drawing tensors in turn."""

    def __init__(self, source: str, device: "torch.device"):
        import torch

        device = torch.device(device)
        self.device = device
        if source == "NV" or (source == "GPU" and device.type != "cuda"):
            self.kind = "NV"  # GPU without CUDA: the numbers a CUDA card would draw (see the module's note)
        elif source == "GPU":
            self.kind = "cuda"
        else:
            self.kind = "cpu"

    def generator(self, seed: int):
        import torch

        if self.kind == "NV":
            return PhiloxGenerator(seed)
        return torch.Generator(self.kind).manual_seed(int(seed))

    def randn(self, generator, shape) -> torch.Tensor:
        import torch

        if isinstance(generator, PhiloxGenerator):
            return generator.randn(shape)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    def seeded(self, seed: int, shape) -> torch.Tensor:
        return self.randn(self.generator(seed), shape)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two noises (a variation seed's strength), row by row of dim 1."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:  # nearly parallel: the sines below would divide by ~0
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sine = torch.sin(omega)
    return ((torch.sin((1.0 - strength) * omega) / sine).unsqueeze(1) * low
            + (torch.sin(strength * omega) / sine).unsqueeze(1) * high)


class ImageRNG:
    """The noise of one batch: `next()` first gives the starting noise, then each later call the noise an
    ancestral or SDE step adds, from each image's own generator, in A1111's order (modules/rng.py ImageRNG).

    `shape` is one image's latent shape (channels, height/8, width/8). The result is float32 on `device`."""

    def __init__(self, shape, seeds: list[int], subseeds: list[int] | None = None, subseed_strength: float = 0.0,
                 seed_resize_from_h: int = 0, seed_resize_from_w: int = 0, source: str = DEFAULT_SOURCE,
                 device: torch.device | str = "cpu", eta_noise_seed_delta: int = 0):
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.resize_from = (seed_resize_from_h, seed_resize_from_w)
        self.eta_noise_seed_delta = eta_noise_seed_delta
        import torch

        self.device = torch.device(device)
        self.draws = _Draws(check_source(source), self.device)
        self.generators = [self.draws.generator(seed) for seed in self.seeds]
        self.is_first = True

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return self._stack([self.draws.randn(generator, self.shape) for generator in self.generators])

    def first(self) -> torch.Tensor:
        height, width = self.resize_from
        resized = height > 0 and width > 0
        noise_shape = (self.shape[0], height // 8, width // 8) if resized else self.shape
        noises = []
        for index, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[index] if index < len(self.subseeds) else 0
                subnoise = self.draws.seeded(subseed, noise_shape)
            if noise_shape != self.shape:
                noise = self.draws.seeded(seed, noise_shape)
            else:
                noise = self.draws.randn(generator, self.shape)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = self._centred(self.draws.randn(generator, self.shape), noise)
            noises.append(noise)
        if self.eta_noise_seed_delta:  # A1111's ENSD: the per-step noise comes from seed + delta
            self.generators = [self.draws.generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return self._stack(noises)

    def _centred(self, canvas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The other size's noise placed in the middle of this size's (cropped where it is larger), as A1111:
        the composition of a seed found at one size survives a change of size."""
        dx = (self.shape[2] - noise.shape[2]) // 2
        dy = (self.shape[1] - noise.shape[1]) // 2
        width = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
        height = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        canvas[:, ty:ty + height, tx:tx + width] = noise[:, sy:sy + height, sx:sx + width]
        return canvas

    def _stack(self, noises: list[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.stack([n.to(self.device) for n in noises])
