"""Train a LoRA from a run's settings file, without the page:

    python -m sd_app.train run.json

The JSON holds `sd_app.training.config.TrainConfig`'s fields (the page saves one as `<name>.train.json`
next to each LoRA it trains); paths in it are taken from the JSON file's folder. Progress goes to the
console; Ctrl+C stops after the current step and saves the LoRA and a state to resume from
(`"resume": "latest"`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from .errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sd_app.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the run's settings (JSON)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .training.config import TrainConfig
    from .training.progress import TrainingRun
    from .training.run import train

    try:
        config = TrainConfig.load(args.config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not config.output_dir:
        print("error: output_dir: name the folder to write the LoRA into (your models/Lora)", file=sys.stderr)
        return 2
    run = TrainingRun(config, owner="cli")
    worker = threading.Thread(target=_train_quietly, args=(train, config, run), daemon=True)
    worker.start()
    shown = 0
    try:
        while not run.wait(args.every):
            shown = _report(run, shown)
    except KeyboardInterrupt:
        print("stopping after this step; the LoRA and a state to resume from are saved…", flush=True)
        run.stop()
        run.wait()
    _report(run, shown)
    print(run.status(), flush=True)
    return 1 if run.error else 0


def _train_quietly(train, config, run) -> None:
    try:
        train(config, run)
    except UserError:
        pass  # recorded in the run: main prints it
    except Exception:  # noqa: BLE001 - logged with its traceback by train(); main prints the message
        pass


def _report(run, shown: int) -> int:
    for message in run.messages[shown:]:
        print(message, flush=True)
    if not run.done:
        print(f"{time.strftime('%H:%M:%S')} {run.status()}", flush=True)
    return len(run.messages)


if __name__ == "__main__":
    sys.exit(main())
