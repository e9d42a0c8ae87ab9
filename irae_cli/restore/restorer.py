"""The model of a run: the weights (given, or shipped for the task) in a ``Restorer`` set up by the options."""

from __future__ import annotations

from ..imageio import image_pixels
from .options import RestoreOptions
from .plan import Job

WORKLOAD_SAMPLE = 64  # headers read to estimate a run's megapixels (for --compile auto)


def load_restorer(opts: RestoreOptions, jobs: list[Job] | None = None, device=None):
    """``(restorer, loaded weights)``; ``jobs`` lets --compile auto weigh the compile time against the run."""
    from ..inference import Restorer
    from ..onnx_export import export_source
    from ..tasks import get_task
    from ..weights import load_weights, require_default_weights

    if opts.backend == "onnxruntime" and opts.device == "auto":
        device = "cpu"  # ONNX Runtime's CPU provider, whatever GPU this machine has
    name = opts.weights or require_default_weights(opts.task)
    loaded = load_weights(name, device="cpu", expect_task=opts.task)
    task = get_task(opts.task)
    params = task.params_for_weights(loaded.task_params, loaded.model.config.channels)
    restorer = Restorer(loaded.model, task, task_params=params, device=device or opts.device, dtype=opts.dtype,
                        tile=opts.tile, tile_overlap=opts.tile_overlap, batch_size=opts.batch_size,
                        compile=opts.compile, self_ensemble=opts.self_ensemble, backend=opts.backend,
                        source=export_source(loaded.sha256, loaded.training),
                        workload_megapixels=_workload_megapixels(jobs) if opts.compile == "auto" and jobs else None)
    return restorer, loaded


def _workload_megapixels(jobs: list[Job]) -> float | None:
    """The run's megapixels, from the headers of an evenly spread sample of its images."""
    if not jobs:
        return None
    stride = max(1, len(jobs) // WORKLOAD_SAMPLE)
    sizes = [n for n in (image_pixels(j.source.path) for j in jobs[::stride]) if n]
    return len(jobs) * sum(sizes) / len(sizes) / 1e6 if sizes else None
