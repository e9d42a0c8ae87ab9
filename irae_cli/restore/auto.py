"""``--task auto`` in a run: route each decoded file (routing.py), and load each task's model on first need."""

from __future__ import annotations

import dataclasses

import torch

from ..degradations.estimate import estimate_sigma
from ..errors import ImageError, IraeError
from ..imageio import read_image
from ..routing import Route, route
from .options import RestoreOptions
from .plan import Job


def route_pixels(job: Job, x: torch.Tensor, max_quality: int | None) -> Route:
    """The route of one decoded file: its header's JPEG quality first, else the noise measured in ``x``."""
    if job.jpeg_quality is not None:  # its quality decides: to the JPEG model, or kept as it is
        return route(job.jpeg_quality, max_quality, None)
    return route(None, max_quality, estimate_sigma(x))


def route_file(job: Job, max_quality: int | None) -> Route | str:
    """The route of one file for --dry-run (decoding it only when its JPEG quality does not decide), or why
    it cannot be read."""
    if job.jpeg_quality is not None:
        return route(job.jpeg_quality, max_quality, None)
    try:
        x, _ = read_image(job.source.path)
    except ImageError as e:
        return str(e)
    return route_pixels(job, x, max_quality)


class AutoModels:
    """The restorers of the tasks files are routed to; each loads once, on the first file that needs it.

    A model that cannot be loaded fails the files routed to it (one line each) and the run goes on.
    """

    def __init__(self, opts: RestoreOptions, jobs: list[Job], device, max_quality: int | None) -> None:
        self.opts, self.jobs, self.device, self.max_quality = opts, jobs, device, max_quality
        self.loaded: dict[str, tuple] = {}
        self.errors: dict[str, str] = {}

    def route(self, job: Job, x: torch.Tensor) -> Route:
        return route_pixels(job, x, self.max_quality)

    def restorer(self, task: str):
        """The task's ``Restorer``, loaded now if it is the first file of its route; IraeError if it cannot be."""
        from .restorer import load_restorer

        if task in self.errors:
            raise IraeError(self.errors[task])
        if task not in self.loaded:
            try:
                self.loaded[task] = load_restorer(dataclasses.replace(self.opts, task=task, weights=None),
                                                  self.jobs, self.device)
            except IraeError as e:
                self.errors[task] = str(e)
                raise
        return self.loaded[task][0]

    def fields(self, task: str | None) -> dict:
        """What a report line says about the model that made it (nothing for a copy)."""
        if task is None:
            return {"dtype": None, "backend": None, "weights_sha256": None, "views": None}
        restorer, loaded = self.loaded[task]
        return {"dtype": str(restorer.dtype).removeprefix("torch."), "backend": restorer.backend,
                "weights_sha256": loaded.sha256, "views": len(restorer.views)}
