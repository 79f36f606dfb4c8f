"""Homegrown: a self-hosted Stable Diffusion XL studio. The engine and its front ends live here."""

__version__ = "0.1.0"
