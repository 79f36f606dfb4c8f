"""Homegrown: start the studio. `python app.py --help` lists the flags; each also reads HOMEGROWN_<FLAG>.

    python app.py --demo                 # tiny demo models, no download, http://127.0.0.1:7860
    python app.py --listen --port 7860   # reachable on the LAN (a password is made and printed)
    python app.py --share                # a public gradio.live link (a password is made and printed)
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A clean start: transformers' and diffusers' loading warnings (torchvision missing, "modules that should be
# kept in float32: []") say nothing a user can act on. Set these to "warning" to see them again.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

FLAGS = {
    # flag: (default, help)
    "port": (7860, "port to serve on"),
    "listen": (False, "listen on all interfaces (LAN, Vast.ai), not only this machine"),
    "share": (False, "also open a public gradio.live link"),
    "auth": (None, "user:password[,user2:password2] for the UI and the API"),
    "auth-file": (None, "a file of user:password lines"),
    "models-dir": (None, "models folder with A1111's layout (Stable-diffusion, Lora, VAE)"),
    "ckpt-dir": (None, "checkpoint folder (default: <models-dir>/Stable-diffusion)"),
    "lora-dir": (None, "LoRA folder (default: <models-dir>/Lora)"),
    "vae-dir": (None, "VAE folder (default: <models-dir>/VAE)"),
    "embeddings-dir": (None, "textual inversion embeddings (default: <models-dir>/embeddings)"),
    "outputs-dir": (None, "where images are saved (default: outputs)"),
    "data-dir": ("data", "settings, hash cache, demo models, user presets and styles"),
    "ckpt": (None, "checkpoint to load at start"),
    "preset": (None, "preset to select at start"),
    "demo": (False, "use the tiny random-weight demo models (made on first use): no download needed"),
    "offline": (False, "never touch the network; hide downloads"),
    "allowed-hosts": (None, "more host names the server answers to, comma-separated (.example.com: a domain and "
                            "its subdomains); others get 400"),
    "cors-allow-origins": (None, "web origins (https://tools.example.com) allowed to call the app from a browser"),
    "tls-certfile": (None, "serve HTTPS with this certificate (PEM); needs --tls-keyfile"),
    "tls-keyfile": (None, "the private key (PEM) of --tls-certfile"),
    "tls-self-signed": (False, "serve HTTPS with a self-signed certificate made once and kept in <data-dir>/tls"),
    "workers": (None, "run on a pool of workers (needs Ray): 'auto' for one per GPU, or a number (CPU: for testing)"),
    "ray-address": (None, "join this Ray cluster (its GPUs become workers) instead of running in this process"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="app.py", description="Homegrown, a self-hosted SDXL studio.",
                                     epilog="Every flag can also be set as HOMEGROWN_<FLAG>, e.g. HOMEGROWN_PORT=8000.")
    for flag, (default, text) in FLAGS.items():
        env = "HOMEGROWN_" + flag.upper().replace("-", "_")
        raw = os.environ.get(env)
        if isinstance(default, bool):
            value = default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")
            parser.add_argument(f"--{flag}", action="store_true", default=value, help=f"{text} [{env}]")
        elif isinstance(default, int):
            parser.add_argument(f"--{flag}", type=int, default=int(raw) if raw else default, help=f"{text} [{env}]")
        else:
            parser.add_argument(f"--{flag}", default=raw if raw else default, help=f"{text} [{env}]")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    return args


def build(args: argparse.Namespace):
    """Make the objects the page runs on, without the model stack (it loads behind the page: `main`);
    returns (studio, blocks, startup)."""
    from sd_app import ui
    from sd_app.auth import credentials
    from sd_app.pool import backend as pool_backend
    from sd_app.presets import PresetLibrary
    from sd_app.settings import SettingsStore
    from sd_app.startup import Startup
    from sd_app.studio import Studio
    from sd_app.styles import StyleLibrary

    data = Path(args.data_dir)
    overrides = {key: value for key, value in (
        ("models_dir", args.models_dir), ("ckpt_dir", args.ckpt_dir), ("lora_dir", args.lora_dir),
        ("vae_dir", args.vae_dir), ("outputs_dir", args.outputs_dir), ("embeddings_dir", args.embeddings_dir))
        if value}
    settings_file = data / "settings.json"
    if args.demo:
        demo_root = data / "demo"
        overrides.update(models_dir=str(demo_root / "models"), ckpt_dir="", lora_dir="", embeddings_dir="")
        settings_file = demo_root / "settings.json"  # what the demo saves never reaches a normal start
    settings = SettingsStore(settings_file, overrides)
    for problem in settings.problems:
        print(f"settings: {problem}", file=sys.stderr)
    exposed = args.listen or args.share
    creds = credentials(args.auth, args.auth_file, exposed)
    shipped = Path(__file__).parent / "presets"
    studio = Studio.create(settings, data, PresetLibrary(shipped, data / "presets"), creds, offline=args.offline,
                           demo=args.demo, styles=StyleLibrary(shipped / "styles", data / "styles"), stack=False)
    studio.start_preset = args.preset or ("Demo (tiny models)" if args.demo else None)
    studio.backend = pool_backend(args.workers, args.ray_address)  # None: one process, no Ray imported
    if args.preset:
        studio.presets.get(args.preset)  # a typo fails now, with the list of presets
    startup = Startup()
    return studio, ui.build(studio, startup), startup


def load_models(studio, startup, args: argparse.Namespace) -> None:
    """Behind the page (served by its own thread): write the demo models on the first --demo start, import the
    model stack, load the checkpoint; then print which model is loaded, or why none is."""
    from sd_app.startup import load_at_start

    def prepare():
        if args.demo:
            from sd_app.demo import write_demo

            write_demo(Path(args.data_dir) / "demo")

    print(load_at_start(studio, startup, args.ckpt, prepare).summary(), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from sd_app import logs

    logs.setup()
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from sd_app.auth import SignInThrottle
    from sd_app.errors import UserError
    from sd_app.tls import certificate_names, server_tls, transport_notes
    from sd_app.web_guard import WebGuard, WebPolicy

    try:
        policy = WebPolicy.from_flags(args.listen, args.allowed_hosts, args.cors_allow_origins,
                                      colab="COLAB_RELEASE_TAG" in os.environ)
        tls = server_tls(args.tls_certfile, args.tls_keyfile, args.tls_self_signed, Path(args.data_dir) / "tls",
                         certificate_names(args.listen, sorted(policy.hosts)), share=args.share)
        studio, blocks, startup = build(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from sd_app import api
    from sd_app.ui import CSS, JS

    host = "0.0.0.0" if args.listen else "127.0.0.1"
    throttle = SignInThrottle()  # one for the page's login and the API's Basic auth
    guard = WebGuard(policy, throttle)
    blocks.queue(default_concurrency_limit=None)
    app, local_url, share_url = blocks.launch(
        server_name=host, server_port=args.port, share=args.share, auth=studio.credentials.as_gradio(),
        auth_message="Homegrown: sign in", prevent_thread_lock=True, show_error=True, quiet=True, css=CSS, js=JS,
        blocked_paths=[str(Path(args.data_dir).resolve()), str(studio.settings.folder("ckpt").resolve()),
                       str(studio.settings.folder("lora").resolve())],
        # ssl_verify only concerns Gradio's start-up request to itself on localhost, which a self-signed
        # certificate, or one made for the machine's public name, would fail.
        ssl_certfile=tls and tls.certfile, ssl_keyfile=tls and tls.keyfile, ssl_verify=False,
        app_kwargs={"lifespan": guard.lifespan, "openapi_url": None})  # Gradio's schema: not without a password
    if not guard.installed:  # never serve without the Host and cross-site checks
        print("error: the web guard could not be installed; stopping", file=sys.stderr)
        blocks.close()
        return 1
    api.mount(app, studio, throttle, startup)
    if share_url:
        policy.allow_host(urlsplit(share_url).hostname or "")
    print(f"Homegrown is running at {local_url}" + (" (and on your LAN)" if args.listen else ""))
    if args.share:
        print(f"Public link: {share_url}" if share_url else
              "The public share link could not be created (no internet, or gradio.live is unreachable); "
              "the local URL still works.")
    for note in transport_notes(args.listen, bool(share_url), tls, args.port):
        print(note)
    if studio.credentials.generated:
        user, password = next(iter(studio.credentials.users.items()))
        print(f"Sign in with user '{user}' and password '{password}' (made for this run; set --auth to choose).")
    saving = studio.outputs.options
    print(f"Images are saved to {saving.outputs_dir.expanduser().resolve()}" if saving.save_images else
          "Images are not saved (Settings, Saving).")
    print(f"Ready in {time.perf_counter() - STARTED:.1f}s: the page is up, the model is loading.", flush=True)
    try:
        load_models(studio, startup, args)  # after the page is up: its imports would slow the page's own
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
