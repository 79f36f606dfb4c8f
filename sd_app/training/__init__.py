"""Training your own SDXL LoRA: the dataset, its buckets and caches, the training loop, kohya-format files.

`config.TrainConfig` holds a run's settings (saved as JSON next to the output); `run.train` runs it, from
the page (through `Studio.start_training`, in the GPU queue) or from `python -m sd_app.train run.json`.
"""
