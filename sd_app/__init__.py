"""Homegrown: a self-hosted Stable Diffusion XL studio. The engine and its front ends live here."""

import os

__version__ = "0.2.0"

# On the CPU, Intel MKL picks kernels by the memory alignment of each buffer, so the same maths can differ
# in the last bit once other allocations (a LoRA load) have moved things around. Strict CNR mode makes
# results depend on the inputs alone: the same request gives the same pixels, LoRA or no LoRA before it.
# MKL reads this once, on its first call; it changes nothing on GPUs.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
