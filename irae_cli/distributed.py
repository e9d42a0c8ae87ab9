"""The processes of one torchrun job: which one this is, which device is its own, and the few collectives irae uses.

``irae train`` and ``irae restore`` run unchanged under ``torchrun`` (WORLD_SIZE > 1 in
the environment).  ``--device`` decides there as everywhere: ``auto``/``cuda`` give each
process the GPU of its LOCAL_RANK, ``cpu`` keeps it on the CPU even where GPUs are visible.
A collective that fails (another process died, a node became unreachable) is one line,
never a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import EXIT_SOME_FAILED, EXIT_USAGE, IraeError, QuietError


class GroupError(IraeError):
    """The processes of a torchrun job lost each other; what was written is complete."""

    exit_code = EXIT_SOME_FAILED


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_gather(self, obj) -> list:
        """Every process's ``obj``, in rank order (just ``[obj]`` outside torchrun)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        everyone = [None] * self.world
        try:
            dist.all_gather_object(everyone, obj)
        except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError or DistBackendError
            raise self._lost(e) from None
        return everyone

    def agree(self, error: IraeError | None, digest: str | None = None) -> None:
        """Raise in every process when one of them failed, or when their plans (``digest``) differ.

        Process 0 says it on one line (naming the process when not all failed alike); the
        others exit with the same code and print nothing.  Also the barrier before any work.
        """
        if not self.active:
            if error is not None:
                raise error
            return
        mine = None if error is None else (str(error), error.exit_code)
        everyone = self.all_gather((mine, digest))
        failed = [(r, e) for r, (e, _) in enumerate(everyone) if e is not None]
        if failed:
            r, (text, _) = failed[0]
            if len(failed) < self.world or len({t for _, (t, _) in failed}) > 1:
                text = f"process {r} of {self.world}: {text}"
            self.fail(text, max(code for _, (_, code) in failed))
        digests = [d for _, d in everyone]
        differs = [r for r, d in enumerate(digests) if d != digests[0]]
        if differs:
            self.fail(f"process {differs[0]} of the torchrun job sees other files under INPUT or OUTPUT than "
                      f"process 0; every machine must see the same INPUT and OUTPUT at the same paths "
                      f"(a shared file system)")

    def fail(self, text: str, code: int = EXIT_USAGE) -> None:
        """Raise the same error in every process; only process 0 prints it."""
        if not self.main:
            raise QuietError(text, code)
        error = IraeError(text)
        error.exit_code = code
        raise error

    def worst(self, code: int) -> int:
        """The highest exit code over all processes."""
        return max(self.all_gather(code))

    def close(self) -> None:
        """End the process group; safe to call more than once, and after the others were lost."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    dist.destroy_process_group()
                except Exception:  # noqa: BLE001 - a group whose peers are gone has nothing left to end
                    pass

    def _lost(self, e: Exception) -> GroupError:
        return GroupError(f"process {self.rank} of the torchrun job lost the others ({_reason(e)}); "
                          f"what was written is complete: run the same command with --skip-existing to finish")


def rank_device(name: str, world: int | None = None, local_rank: int | None = None) -> torch.device:
    """This process's device. ``--device`` decides, under torchrun too: a visible GPU never overrides
    ``--device cpu``; ``auto``/``cuda`` give each process the GPU of its LOCAL_RANK."""
    from .inference import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    device = pick_device(name)
    if world > 1 and device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise IraeError(f"torchrun process with LOCAL_RANK {local_rank} has no GPU of its own: this machine has "
                            f"{count} GPU(s) and each process needs one; use --nproc_per_node {count} or "
                            f"--device cpu")
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: torch.device | None = None, timeout: timedelta | None = None) -> Dist:
    """Under torchrun (WORLD_SIZE > 1): one process group, NCCL for CUDA tensors, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        try:
            if timeout is None:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - a missing or unreachable rendezvous is the user's to fix
            raise IraeError(f"WORLD_SIZE={world} is set but the torchrun process group cannot start ({_reason(e)}); "
                            f"start irae with torchrun, check MASTER_ADDR/MASTER_PORT, or unset WORLD_SIZE") from None
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _reason(e: Exception) -> str:
    """gloo's first sentence, without the source location it starts with."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|py):\d+\]\s*", "", text)
    return text.split(". ")[0][:200]
