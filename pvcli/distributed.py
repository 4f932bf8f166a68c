"""Data-parallel tuning: one identity on N processes started by `accelerate launch` or torchrun
(`pv tune --processes N` starts torchrun itself). Each process samples its own prompts, noise and
frames; gradients are summed across processes after each process's clips (then averaged over the
clips that had a loss), so every replica takes the same optimizer step. Only the main process
writes checkpoints, logs and the identity.

On CUDA the process group comes from accelerate's PartialState (NCCL, one GPU per local rank);
on CPU it is gloo (accelerate treats torchrun on CPU as a single process)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .errors import PVError


@dataclass
class DataParallel:
    rank: int
    world: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sync(self, params, contributed: int, losses: list[float], sims: list[float]):
        """Sum every process's gradients and its clip statistics; returns the totals as the
        tuner's `grad_sync` expects: (clips with a loss, [mean loss], [mean id sim])."""
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads] + [torch.tensor(
            [contributed, sum(losses), len(losses), sum(sims), len(sims)], dtype=grads[0].dtype, device=grads[0].device)])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).clone()
            offset += n
        total, loss_sum, loss_n, sim_sum, sim_n = flat[offset:].tolist()
        return (int(total), [loss_sum / loss_n] if loss_n else [], [sim_sum / sim_n] if sim_n else [])

    def broadcast(self, params) -> None:
        """Start every replica from the main process's adapter."""
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, 0)

    def drift(self, params) -> float:
        """The largest absolute difference between replicas' adapter weights, over every weight (0
        when in sync): each weight's highest and lowest value across processes, compared weight by
        weight (sums would hide changes that cancel)."""
        import torch
        import torch.distributed as dist

        flat = torch.cat([p.detach().flatten().double() for p in params])
        high, low = flat, flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return float((high - low).max()) if flat.numel() else 0.0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def process_group() -> DataParallel | None:
    """The process group when pv runs under a distributed launcher, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        from accelerate import PartialState

        device = str(PartialState().device)
    else:
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        device = "cpu"
    return DataParallel(dist.get_rank(), dist.get_world_size(), device)


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
