"""Rows from every process, with gradients flowing back to the process that computed each row.

Contrastive losses score each local row against the columns of the global batch. Gathering with
`torch.distributed.nn.functional.all_gather` keeps the graph: in the backward pass each process receives
the sum of the gradients every process computed for its rows. With each process's loss summed over its
own rows, the step's gradient is then exactly the one-process gradient of the global batch, after the
averaging DDP or DeepSpeed apply (which the loop's normalisation accounts for, as for any summed loss).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes in the default group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows, concatenated in rank order, and where this process's rows start among them.

    Every process must pass the same number of rows (the loop's batches are equal per process). Under
    `torch.no_grad` it is a plain gather.
    """
    if world_size() == 1:
        return rows, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(rows.contiguous())), dist.get_rank() * rows.shape[0]
