"""The choices that decide how the pipelines are held (device, precision, memory mode), as plain names.

They act in `pipelines.py`, which imports them from here: this module imports no torch, so the settings
table and the page can be built while the model stack is still importing.
"""

DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPE_NAMES = ("float16", "bfloat16", "float32")  # torch dtypes of these names; `pipelines.DTYPES` maps them
MEMORY_MODES = ("auto", "none", "model-offload", "sequential-offload")

# Changing these means loading the checkpoint again (the Settings page marks them ⟳).
RELOAD_OPTIONS = ("device", "dtype", "memory_mode", "vae_tiling", "vae")
