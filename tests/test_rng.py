"""Seeds' noise as A1111 draws it: NV (CUDA's Philox on the CPU), CPU, variation seeds, seed resize."""

import math

import numpy as np
import pytest
import torch

from sd_app import rng
from sd_app.errors import UserError

# A1111's modules/rng_philox.py documents these: Generator(seed=0).randn((3, 4)), the numbers
# torch.randn((3, 4), device="cuda") gives after torch.manual_seed(0).
CUDA_SEED_0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
               [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
               [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def _scalar_philox_randn(seed: int, offset: int, index: int) -> float:
    """One number of A1111's NV generator, written out in plain Python integers (a second, independent reading
    of Philox 4x32-10 and cuRAND's Box-Muller to check the vectorised one against)."""
    mask = 0xFFFFFFFF
    c = [offset & mask, 0, index & mask, 0]
    k = [seed & mask, (seed >> 32) & mask]
    for number in range(10):
        p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & mask, (p0 >> 32) ^ c[3] ^ k[1], p0 & mask]
        if number < 9:
            k = [(k[0] + 0x9E3779B9) & mask, (k[1] + 0xBB67AE85) & mask]
    inv = float(np.float32(2.3283064e-10))
    inv_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
    u = c[0] * inv + inv / 2
    v = c[1] * inv_2pi + inv_2pi / 2
    return float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v)))


def test_nv_gives_a_cuda_cards_numbers():
    drawn = rng.PhiloxGenerator(0).randn((3, 4))
    assert drawn.dtype == torch.float32
    assert torch.allclose(drawn, torch.tensor(CUDA_SEED_0), atol=1e-6)


@pytest.mark.parametrize("seed", [1, 42, 2**32 - 1, 2**32 + 7, 123456789012])
def test_nv_matches_a_plain_reading_of_philox(seed):
    generator = rng.PhiloxGenerator(seed)
    first, second = generator.randn((2, 3, 5)), generator.randn((7,))
    for offset, tensor in ((0, first), (1, second)):
        flat = tensor.flatten().tolist()
        for index in (0, 1, len(flat) - 1):
            assert flat[index] == pytest.approx(_scalar_philox_randn(seed, offset, index), abs=1e-6)


def test_nv_noise_looks_normal():
    drawn = rng.PhiloxGenerator(3).randn((4, 64, 64))
    assert abs(drawn.mean().item()) < 0.03 and abs(drawn.std().item() - 1) < 0.03


def test_gpu_without_cuda_draws_what_cuda_draws():
    gpu = rng.ImageRNG((3, 4), [0], source="GPU").next()
    assert torch.allclose(gpu[0], torch.tensor(CUDA_SEED_0), atol=1e-6)
    nv = rng.ImageRNG((3, 4), [0], source="NV").next()
    assert torch.equal(gpu, nv)


def test_cpu_source_is_torch_cpu_generator():
    noise = rng.ImageRNG((4, 8, 8), [5, 6], source="CPU").next()
    for row, seed in zip(noise, (5, 6)):
        assert torch.equal(row, torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("source", rng.SOURCES)
def test_each_image_draws_from_its_own_seed_in_turn(source):
    """The batch's noise is each image's own, and later calls go on from each image's generator: batch
    position does not change an image's noise."""
    batch = rng.ImageRNG((4, 8, 8), [10, 11], source=source)
    alone = rng.ImageRNG((4, 8, 8), [11], source=source)
    for _ in range(3):
        assert torch.equal(batch.next()[1], alone.next()[0])
    fresh = rng.ImageRNG((4, 8, 8), [10], source=source)
    first, step = fresh.next(), fresh.next()
    assert not torch.equal(first, step)


def test_variation_seed_slerps_towards_the_subseed():
    shape = (4, 8, 8)
    plain = rng.ImageRNG(shape, [1], source="CPU").next()
    zero = rng.ImageRNG(shape, [1], subseeds=[2], subseed_strength=0.0, source="CPU").next()
    assert torch.equal(plain, zero)
    sub = rng.ImageRNG(shape, [2], source="CPU").next()
    full = rng.ImageRNG(shape, [1], subseeds=[2], subseed_strength=1.0, source="CPU").next()
    assert torch.allclose(full, sub, atol=1e-5)
    half = rng.ImageRNG(shape, [1], subseeds=[2], subseed_strength=0.5, source="CPU").next()
    d_plain, d_sub = (half - plain).abs().mean(), (half - sub).abs().mean()
    assert 0.5 < d_plain / d_sub < 2  # in between
    # A slerp keeps the noise's scale where a linear mix of two independent noises would shrink it (by 1/sqrt 2).
    assert half.std().item() > 0.85


def test_slerp_is_a1111s_formula():
    low, high = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(
        4, 8, 8, generator=torch.Generator().manual_seed(2))
    low_n, high_n = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(1))
    expected = (torch.sin(0.7 * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(0.3 * omega) / torch.sin(omega)).unsqueeze(1) * high
    assert torch.allclose(rng.slerp(0.3, low, high), expected, atol=1e-6)


def test_seed_resize_keeps_the_other_sizes_noise_in_the_middle():
    small = rng.ImageRNG((4, 8, 8), [9], source="CPU").next()[0]
    bigger = rng.ImageRNG((4, 12, 16), [9], seed_resize_from_h=64, seed_resize_from_w=64, source="CPU").next()[0]
    assert torch.equal(bigger[:, 2:10, 4:12], small)
    smaller = rng.ImageRNG((4, 4, 6), [9], seed_resize_from_h=64, seed_resize_from_w=64, source="CPU").next()[0]
    assert torch.equal(smaller, small[:, 2:6, 1:7])


def test_eta_noise_seed_delta_moves_only_the_step_noise():
    plain, delta = rng.ImageRNG((4, 8, 8), [3], source="CPU"), rng.ImageRNG((4, 8, 8), [3], source="CPU",
                                                                           eta_noise_seed_delta=31337)
    assert torch.equal(plain.next(), delta.next())
    step = delta.next()[0]
    assert torch.equal(step, torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3 + 31337)))


def test_source_names_are_checked():
    assert rng.check_source("nv") == "NV"
    with pytest.raises(UserError) as err:
        rng.check_source("TPU")
    assert err.value.field == "randn_source" and "GPU, CPU, NV" in str(err.value)
