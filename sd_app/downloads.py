"""Downloading model files from Hugging Face into the model folders, with progress.

Only .safetensors files are accepted (no pickles), names cannot climb out of the target folder, and an
existing file is never replaced unless the caller says so. `HF_ENDPOINT` points it at a mirror (or the
tests' stand-in server).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UserError

SDXL_BASE = ("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors")
SDXL_REFINER = ("stabilityai/stable-diffusion-xl-refiner-1.0", "sd_xl_refiner_1.0.safetensors")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

Progress = Callable[[int, int | None], None]  # (bytes done, bytes in all or None)


def check_request(repo_id: str, filename: str, revision: str | None) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id.strip()) or ".." in repo_id:
        raise UserError("must look like owner/name, e.g. stabilityai/stable-diffusion-xl-base-1.0", field="repo_id")
    if not isinstance(filename, str) or not filename.strip():
        raise UserError("name the file to download, e.g. my_lora.safetensors", field="filename")
    if not filename.strip().lower().endswith(".safetensors"):
        raise UserError("only .safetensors files are downloaded: other formats can carry code that runs when "
                        "they are loaded", field="filename")
    if filename.startswith("/") or ".." in filename.replace("\\", "/").split("/"):
        raise UserError("must be a file inside the repository, without '..'", field="filename")
    if revision and not re.match(r"^[\w./-]{1,100}$", revision):
        raise UserError("must be a branch, tag or commit", field="revision")


def download(repo_id: str, filename: str, folder: str | Path, revision: str | None = None,
             overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Fetch one file into `folder` (keeping only its base name) and return its path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from tqdm.auto import tqdm

    repo_id, filename, revision = repo_id.strip(), filename.strip(), (revision or "").strip() or None
    check_request(repo_id, filename, revision)
    folder = Path(folder)
    target = folder / Path(filename).name
    if target.exists() and not overwrite:
        raise UserError(f"{target.name} already exists in {folder}; tick 'overwrite' to replace it",
                        field="filename", status=409)

    class Reporter(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            super().update(n)
            if progress is not None and self.unit == "B":
                progress(int(self.n), int(self.total) if self.total else None)

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        try:
            got = hf_hub_download(repo_id, filename, revision=revision, local_dir=tmp, tqdm_class=Reporter)
        except LocalEntryNotFoundError:  # what huggingface_hub raises when it cannot connect at all
            raise UserError("could not reach Hugging Face: the download failed. Is this machine online?",
                            status=502) from None
        except GatedRepoError:
            raise UserError(f"{repo_id} is gated: accept its terms on huggingface.co and log in with "
                            "`hf auth login` (or set HF_TOKEN)", field="repo_id", status=403) from None
        except RepositoryNotFoundError:
            raise UserError(f"no repository {repo_id!r} on Hugging Face (or it is private)", field="repo_id",
                            status=404) from None
        except RevisionNotFoundError:
            raise UserError(f"{repo_id} has no revision {revision!r}", field="revision", status=404) from None
        except EntryNotFoundError:
            raise UserError(f"{repo_id} has no file {filename!r}", field="filename", status=404) from None
        except HfHubHTTPError as exc:
            raise UserError(f"Hugging Face refused the download: {str(exc)[:200]}", status=502) from None
        except OSError as exc:  # no network, DNS failure, disk full
            raise UserError(f"the download failed: {str(exc)[:200]}. Is this machine online?", status=502) from None
        shutil.move(got, target)  # whole files only: a broken download never lands in the folder
    return target
