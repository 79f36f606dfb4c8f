"""The studio's upscaler and Extras part (a base of `Studio`): the upscaler files in the folder set now, and
A1111's Extras upscale as a job on the studio's board, under the GPU lock, saved into `extras-images/`.

Kept apart from `studio.py` so that the seam stays one screenful per concern; it uses the studio's settings,
lock, job board, outputs and limits, and nothing of the engine's insides.
"""

from __future__ import annotations

import time

from . import extras
from .errors import UserError
from .jobs import Job
from .upscaler_library import UpscalerLibrary

API_OWNER = "api"  # the owner of jobs that come from /sdapi/v1 (studio.API_OWNER)


class StudioExtras:
    _upscaler_library: UpscalerLibrary | None = None

    def upscaler_library(self) -> UpscalerLibrary:
        """The upscaler files in the folder set now (a new library when Settings move it)."""
        folder = self.settings.folder("upscaler")
        with self._lock:
            if self._upscaler_library is None or self._upscaler_library.root != folder:
                self._upscaler_library = UpscalerLibrary(folder)
            return self._upscaler_library

    def upscaler_names(self) -> list[str]:
        """None, Lanczos, Nearest, then the model files, as A1111 lists them."""
        from .upscalers import upscaler_names

        return upscaler_names(self.upscaler_library())

    def upscalers(self):
        """The image upscalers on the pipelines' device (an `upscalers.Upscalers`)."""
        from .upscalers import Upscalers

        pipelines = self._stack()
        return Upscalers(self.upscaler_library(), pipelines.device, pipelines.dtype)

    def upscale(self, image, upscaler: str, scale: float | None = None, size: tuple[int, int] | None = None,
                owner: str = API_OWNER, job: Job | None = None):
        """One image made larger by the upscaler `upscaler` (by `scale`, or to `size` = (width, height)) as a job
        under the GPU lock; None if interrupted."""
        return self.extras([image], extras.ExtrasRequest(
            resize_mode=0 if size is None else 1, upscaling_resize=scale or 1.0,
            upscaling_resize_w=size[0] if size else 512, upscaling_resize_h=size[1] if size else 512,
            upscaling_crop=size is not None, upscaler_1=upscaler), owner, job, save=False).images[0]

    def extras(self, images: list, request: extras.ExtrasRequest, owner: str = API_OWNER, job: Job | None = None,
               save: bool | None = None, output_format: str | None = None) -> extras.ExtrasResult:
        """A1111's Extras upscale of `images` as one job: it queues with generation on the GPU lock, shows its
        tiles as progress, and stops between tiles on Interrupt. The results keep their sources' infotexts and
        are saved into `extras-images/` (unless `save` says not to)."""
        pipelines = self._stack()
        upscalers = self.upscalers()
        request.check(upscalers.names())
        extras.check_images(images, request, self.limits())  # refused before it queues
        job = job or Job(None, owner)
        job.owner = owner
        self.jobs.add(job)
        try:
            with pipelines.lock:
                job.started = job.started or time.time()
                try:
                    result = extras.run(images, request, upscalers, job, self.limits())
                except (MemoryError, RuntimeError) as err:
                    if isinstance(err, RuntimeError) and "out of memory" not in str(err).lower():
                        raise
                    raise UserError("out of memory while upscaling: choose a smaller scale or image", status=507) \
                        from None
                finally:
                    job.finished = time.time()
            job.set_progress(1.0)
            if result.images and (self.outputs.options.save_images if save is None else save):
                try:
                    result.paths = self.outputs.save_extras(result.images, output_format)
                except OSError as err:
                    result.warnings.append(f"the upscaled images were not saved: {err}")
            return result
        finally:
            self.jobs.remove(job)

    def start_extras(self, images: list, request: extras.ExtrasRequest, owner: str, save: bool | None = None) -> Job:
        """`extras` in a thread of its own, for a front end that waits on the job; refused at once when over the
        limits or naming an unknown upscaler."""
        request.check(self.upscaler_names())
        extras.check_images(images, request, self.limits())
        job = Job(None, owner)
        return self._in_thread(job, lambda: self.extras(images, request, owner, job, save))
