"""Data-parallel tuning: one identity on N processes started by `accelerate launch` or torchrun
(`pv tune --processes N` starts torchrun itself). Each process samples its own prompts, noise and
frames; torch's DistributedDataParallel, set up by accelerate, averages the adapter's gradients
across processes in each step's backward (and starts every replica from the main process's
adapter), and the tuner rescales the average to the mean over the clips that had a loss, so every
replica takes the same optimizer step. Only the main process writes checkpoints, logs and the
identity.

accelerate picks the process group: NCCL with one GPU per local rank on CUDA, gloo on CPU."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from .errors import PVError


@dataclass
class DataParallel:
    accelerator: Any  # accelerate.Accelerator

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> str:
        return str(self.accelerator.device)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def attach(self, tuner) -> None:
        """Run the tuner's clips through DDP over the adapter's parameters (DDP broadcasts the
        main process's adapter as it wraps them); the clip statistics are summed by `sync`."""
        from .engine.tune import ClipLoss

        clip = self.accelerator.prepare(ClipLoss(tuner))
        tuner.clip, tuner.replicas, tuner.grad_sync = clip, self.world, self.sync
        tuner.accumulating = lambda: self.accelerator.no_sync(clip)

    def sync(self, params, contributed: int, losses: list[float], sims: list[float]):
        """Every process's clip statistics, summed (DDP has averaged the gradients in backward);
        returns what the tuner's `grad_sync` expects: (clips with a loss, [mean loss], [mean id sim])."""
        import torch

        stats = torch.tensor([contributed, sum(losses), len(losses), sum(sims), len(sims)], dtype=torch.float64,
                             device=self.accelerator.device)
        total, loss_sum, loss_n, sim_sum, sim_n = self.accelerator.reduce(stats, "sum").tolist()
        return (int(total), [loss_sum / loss_n] if loss_n else [], [sim_sum / sim_n] if sim_n else [])

    def drift(self, params) -> float:
        """The largest difference between replicas' adapter weights (0 when in sync)."""
        import torch

        total = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
        every = self.accelerator.gather(total)
        return float(every.max() - every.min())

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def process_group() -> DataParallel | None:
    """The process group when pv runs under a distributed launcher, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # the wrapped module holds only the adapter's parameters and no buffers
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return DataParallel(Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp]))


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes a distributed launcher started (0, 1 alone)."""
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_replica() -> bool:
    """Whether this process is a data-parallel replica (not the main process)."""
    return rank_and_world()[0] > 0


def launch(processes: int, argv: list[str]) -> int:
    """Run `pv <argv>` on `processes` local processes through torchrun; returns its exit code."""
    import subprocess

    if processes < 1:
        raise PVError(f"--processes must be at least 1, got {processes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "pvcli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TORCHELASTIC_ERROR_FILE": os.devnull}
    return subprocess.call(cmd, env=env)
