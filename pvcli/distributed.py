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

    sharded: bool = False  # the frozen denoiser is split across the processes (`shard`)

    def attach(self, tuner, shard: bool = False) -> None:
        """Run the tuner's clips through DDP over the adapter's parameters (DDP broadcasts the
        main process's adapter as it wraps them); the clip statistics are summed by `sync`.
        `shard` (tune.fsdp) first splits the frozen denoiser across the processes."""
        if shard:
            self.shard(tuner.bb.denoiser, tuner.params)
        clip = self.accelerator.prepare(tuner.clip_module())  # the engine's module over the adapter
        tuner.clip, tuner.replicas, tuner.grad_sync = clip, self.world, self.sync
        tuner.accumulating = lambda: self.accelerator.no_sync(clip)

    def shard(self, denoiser, keep) -> None:
        """FSDP2: each process keeps 1/N of the frozen denoiser's weights, and each block's are
        gathered only while it runs; `keep` (the adapter's parameters) stays whole on every process
        for DDP. Every process must then run the same denoiser calls (see jobs.tune)."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        mesh = DeviceMesh.from_group(dist.group.WORLD, self.accelerator.device.type)  # no second group
        # the blocks only: the denoiser's own few top-level weights stay whole (its output is a view,
        # which FSDP2 warns an in-place op could cut from backward)
        for module in shard_units(denoiser) or [denoiser]:
            fully_shard(module, mesh=mesh, ignored_params=set(keep))
        self.sharded = True

    def from_main(self, value):
        """The main process's `value` (any picklable object), on every process."""
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def sync(self, params, contributed: int, losses: list[float], sims: list[float]):
        """Every process's clip statistics, summed (DDP has averaged the gradients in backward);
        returns what the tuner's `grad_sync` expects: (clips with a loss, [mean loss], [mean id sim])."""
        import torch

        stats = torch.tensor([contributed, sum(losses), len(losses), sum(sims), len(sims)], dtype=torch.float64,
                             device=self.accelerator.device)
        total, loss_sum, loss_n, sim_sum, sim_n = self.accelerator.reduce(stats, "sum").tolist()
        return (int(total), [loss_sum / loss_n] if loss_n else [], [sim_sum / sim_n] if sim_n else [])

    def drift(self, params) -> float:
        """The largest absolute difference between replicas' adapter weights, over every weight (0
        when in sync): each weight's highest and lowest value across processes, compared weight by
        weight (sums would hide changes that cancel)."""
        import torch

        flat = torch.cat([p.detach().flatten().double() for p in params]) if params else torch.zeros(0)
        if not flat.numel():
            return 0.0
        every = self.accelerator.gather(flat[None])  # (processes, weights)
        return float((every.amax(0) - every.amin(0)).max())

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def shard_units(denoiser) -> list:
    """The blocks FSDP2 gathers one at a time: the denoiser's modules of the classes it marks as not
    to be split (diffusers' `_no_split_modules`), outermost only; else each entry of its top-level
    module lists (down/up blocks, transformer blocks) and each other top-level child with weights."""
    names = set(getattr(denoiser, "_no_split_modules", None) or ())
    units: list = []
    if names:
        inside: set[int] = set()
        for module in denoiser.modules():  # a block comes before the modules it holds
            if id(module) not in inside and type(module).__name__ in names:
                units.append(module)
                inside.update(id(m) for m in module.modules())
        return units
    for child in denoiser.children():
        if type(child).__name__ == "ModuleList":
            units.extend(m for m in child if any(True for _ in m.parameters()))
        elif any(True for _ in child.parameters()):
            units.append(child)
    return units


_closing: list = []  # the atexit hook that ends the process group, once registered


def process_group() -> DataParallel | None:
    """The process group when pv runs under a distributed launcher, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import atexit

    import torch
    from accelerate import Accelerator, PartialState

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if not _closing:  # the group's threads end before the interpreter's (gloo aborts otherwise)
        _closing.append(atexit.register(PartialState().destroy_process_group))
    return DataParallel(accelerator)



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
