"""A whole training run: dataset, model, caches, the steps, saves, samples, and the finished LoRA file.

The run holds the GPU (`gpu_lock`, the generation queue's lock) one step at a time. Between steps it lets
waiting generation jobs go first (`others_waiting`): a person generating images while a LoRA trains waits
for one training step, not for the whole run; the run pauses meanwhile and goes on by itself.

Sample images come from the run's own pipeline with the LoRA in progress (not from the engine): the engine
would need the LoRA as a file in the library and a second copy of the model, and fusing it there
every N steps costs more than the sample; the run's pipeline already holds the adapter as it trains.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..loading import load_base
from ..models import Checkpoint, CheckpointLibrary, HashCache
from ..pipelines import pick_device
from . import kohya_file, network
from .cache import Cache, cache_dataset
from .config import TrainConfig
from .dataset import Dataset, scan
from .loop import Trainer
from .progress import TrainingRun

log = logging.getLogger(__name__)


def train(config: TrainConfig, run: TrainingRun | None = None, checkpoints: CheckpointLibrary | None = None,
          hashes: HashCache | None = None, gpu_lock=None, others_waiting=None) -> TrainingRun:
    """Train `config` to the end (or until `run.stop()`) and end `run` (made here if not given) with its
    outcome. UserError for what the user can fix; anything else is a bug, raised after the run records it."""
    run = run or TrainingRun(config)
    try:
        _train(config, run, checkpoints, hashes, gpu_lock, others_waiting)
    except UserError as err:
        run.end(error=str(err), cause=err)
        raise
    except Exception as err:
        log.exception("training %s failed", config.output_name)
        run.end(error=f"training failed: {type(err).__name__}: {err}", cause=err)
        raise
    run.end()
    return run


def _train(config: TrainConfig, run: TrainingRun, checkpoints, hashes, gpu_lock, others_waiting) -> None:
    config.check()
    gpu = gpu_lock or threading.RLock()
    work = config.work_path()
    run.note = "Reading the dataset…"
    dataset = scan(config.dataset_dir, config.resolution, config.trigger_word, config.caption_template)
    for line in dataset.skipped:
        run.say(f"Skipped {line}")
        log.warning("training %s: skipped %s", config.output_name, line)
    checkpoint = resolve_checkpoint(config.checkpoint, checkpoints)
    model_hash = (hashes or HashCache(work / "hashes.json")).sha256(checkpoint.path) if not checkpoint.is_folder \
        else checkpoint.name
    device = pick_device(config.device)
    precision = resolve_precision(config.mixed_precision, device, run)
    started_at = time.time()
    with gpu:
        pipe, trainer = _prepare(config, run, dataset, checkpoint, model_hash, device, precision, work)
    for note in trainer.notes:
        run.say(note)
    config.save(Path(config.output_dir) / f"{config.output_name}.train.json")
    _steps(config, run, trainer, gpu, others_waiting, work, dataset, started_at, checkpoint, model_hash)
    with gpu:
        _finish(config, run, trainer, work, dataset, started_at, checkpoint, model_hash)


def resolve_checkpoint(name: str, checkpoints: CheckpointLibrary | None) -> Checkpoint:
    path = Path(name)
    if path.suffix == ".safetensors" or path.is_absolute() or (checkpoints is None and path.exists()):
        if not path.exists():
            raise UserError(f"no checkpoint file {path}", field="checkpoint")
        return Checkpoint(path.stem, path, is_folder=path.is_dir())
    if checkpoints is None:
        raise UserError(f"no checkpoint {name!r}: give a path to an SDXL base .safetensors", field="checkpoint")
    return checkpoints.get(name)


def resolve_precision(wanted: str, device: torch.device, run: TrainingRun) -> str:
    if device.type != "cuda":
        if wanted in ("fp16", "bf16"):
            run.say(f"Mixed precision ({wanted}) needs a GPU: training in fp32 on the {device.type}")
        return "no"
    if wanted == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return wanted


def _prepare(config, run, dataset: Dataset, checkpoint, model_hash, device, precision, work: Path):
    run.note = f"Loading {checkpoint.name}…"
    pipe = load_base(checkpoint, torch.float32)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    pipe.unet.to(device, weight_dtype)
    pipe.text_encoder.to(device, weight_dtype)
    pipe.text_encoder_2.to(device, weight_dtype)
    pipe.vae.to(device)
    cache = Cache(work / "cache", model_hash)

    def report(done, total):
        run.note = f"Caching latents {done}/{total}…"

    examples = cache_dataset(cache, dataset, pipe.vae, device, report)
    text_cache = None
    if not config.train_text_encoder:
        run.note = "Caching text embeddings…"
        encoders = (pipe.text_encoder, pipe.text_encoder_2)
        texts = {item.caption: cache.text(item.caption, (pipe.tokenizer, pipe.tokenizer_2), encoders, device)
                 for item in dataset.items}
        text_cache = texts.__getitem__
    if device.type == "cuda" and not config.train_text_encoder:
        _place(pipe, "cpu")  # cached: the VAE and text encoders leave the GPU (back only for sample images)
    run.say(f"{len(dataset.items)} images ({cache.hits} cached latents/embeddings reused, {cache.misses} computed)")
    repeats = [dataset.repeats[item.folder] for item in dataset.items]
    trainer = Trainer(config, pipe, examples, repeats, device, precision, text_cache)
    if config.resume:
        _resume(config, run, trainer, work, dataset)
    run.step = trainer.step
    return pipe, trainer


def _resume(config, run, trainer: Trainer, work: Path, dataset: Dataset) -> None:
    path = latest_state(work) if config.resume == "latest" else Path(config.resume)
    if path is None or not path.is_file():
        raise UserError(f"no saved state {config.resume!r} (saved states are in {work / 'states'})", field="resume")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != _fingerprint(config, dataset):
        raise UserError(f"{path.name} was saved by a run with other settings or images (rank, alpha, layers, seed, "
                        "resolution or dataset differ): start a new run instead", field="resume")
    trainer.load_state_dict(state)
    run.say(f"Resumed from {path.name} at step {trainer.step}")


def latest_state(work: Path) -> Path | None:
    states = sorted((work / "states").glob("step-*.pt"))
    return states[-1] if states else None


def _fingerprint(config: TrainConfig, dataset: Dataset) -> list:
    fields = ("rank", "alpha", "train_feed_forward", "train_conv", "train_text_encoder", "seed", "resolution",
              "batch_size", "optimizer", "lr_schedule", "max_steps", "warmup_steps")
    return [dataset.fingerprint(), *(getattr(config, name) for name in fields)]


def _steps(config, run, trainer: Trainer, gpu, others_waiting, work, dataset, started_at, checkpoint, model_hash):
    while trainer.step < config.max_steps and not run.stopped:
        _wait_turn(run, others_waiting)
        if run.stopped:
            break
        with gpu:
            try:
                loss = trainer.train_step()
            except FloatingPointError as err:
                raise UserError(str(err), field="learning_rate") from None
            except (torch.OutOfMemoryError, MemoryError):
                raise UserError("out of memory: lower the resolution, rank or batch size, turn on gradient "
                                "checkpointing, or choose 8-bit AdamW", status=507) from None
            run.record(trainer.step, loss)
            step = trainer.step
            if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                save_state(config, run, trainer, work, dataset)
                _write_lora(config, run, trainer, dataset, started_at, checkpoint, model_hash,
                            Path(config.output_dir) / f"{config.output_name}-step{step:08d}.safetensors")
            if config.sample_every and config.sample_prompts and step % config.sample_every == 0:
                run.add_samples(step, _samples(config, run, trainer, work))


def _wait_turn(run: TrainingRun, others_waiting) -> None:
    """Hold while paused, and while generation jobs wait for the GPU (they go first)."""
    while not run.stopped and (run.paused or (others_waiting is not None and others_waiting())):
        if not run.paused:
            run.note = "Waiting: generating images for others first…"
        time.sleep(0.05)
    run.note = None


def _finish(config, run, trainer: Trainer, work, dataset, started_at, checkpoint, model_hash) -> None:
    save_state(config, run, trainer, work, dataset)
    if config.sample_prompts and not (run.samples and run.samples[-1][0] == trainer.step):
        run.add_samples(trainer.step, _samples(config, run, trainer, work))
    output = config.output_path()
    _write_lora(config, run, trainer, dataset, started_at, checkpoint, model_hash, output)
    latest = run.latest_samples()
    if latest and latest[1]:
        latest[1][0].save(output.with_name(f"{config.output_name}.preview.png"))  # A1111's card preview
    run.output = output
    run.say(f"Saved {output}")


def save_state(config, run: TrainingRun, trainer: Trainer, work: Path, dataset: Dataset) -> Path:
    """Everything needed to go on exactly from here (adapter, optimizer, schedule, random states, step)."""
    path = work / "states" / f"step-{trainer.step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".part")
    torch.save({**trainer.state_dict(), "fingerprint": _fingerprint(config, dataset)}, temporary)
    temporary.replace(path)
    run.saved_states.append(path)
    return path


def _write_lora(config, run, trainer: Trainer, dataset, started_at, checkpoint, model_hash, path: Path) -> Path:
    state = network.kohya_state_dict(trainer.models, config.alpha, kohya_file.SAVE_DTYPES[config.save_precision])
    fields = kohya_file.metadata(config, dataset, trainer.step, started_at, checkpoint.short_name, model_hash,
                                 trainer.precision, trainer.optimizer_name,
                                 epochs=-(-trainer.step // trainer.batches_per_epoch()),
                                 batches_per_epoch=trainer.batches_per_epoch())
    return kohya_file.save(state, fields, path)


def _place(pipe, device) -> None:
    for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.to(device)


def _samples(config, run: TrainingRun, trainer: Trainer, work: Path) -> list:
    """One image per sample prompt, from the run's pipeline with the LoRA as it is now (same seed each time)."""
    run.note = f"Sample images at step {trainer.step}…"
    pipe = trainer.pipe
    pipe.set_progress_bar_config(disable=True)
    for model in trainer.models.values():
        model.eval()
    images = []
    offloaded = trainer.device.type == "cuda" and not config.train_text_encoder
    if offloaded:
        _place(pipe, trainer.device)
    with trainer.autocast():
        for number, prompt in enumerate(config.sample_prompts):
            generator = torch.Generator("cpu").manual_seed(config.sample_seed)
            image = pipe(prompt=prompt, num_inference_steps=config.sample_steps, width=config.resolution,
                         height=config.resolution, generator=generator).images[0]
            folder = work / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"step{trainer.step:08d}-{number}.png")
            images.append(image)
    if offloaded:
        _place(pipe, "cpu")
    run.note = None
    return images
