"""Resumable checkpoints: model, optimizer, scheduler, RNG states, the loop's position and the task's state.

Accelerate's save_state writes every rank's part (sharded under FSDP and DeepSpeed). We write into a
hidden temporary folder and rename it to `step_N` only after every rank has finished, so a kill during
a save never damages the newest complete checkpoint; leftovers are cleaned up by the next save.
A task's own state (Task.state_dict) is written by every rank to `task_state_<rank>.pt`, so per-process
state resumes as exactly as replicated state.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fmkit.errors import ConfigError

STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class LoopState:
    """What the loop needs beyond the model and optimizer to continue exactly where it stopped."""

    step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    global_micro_batch: int = 0
    """Per-process batch x processes, to detect a resume under a different data layout."""
    processes: int = 0
    """How many processes saved it: each restores its own task state."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves are not listed)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: Path, value: str | None) -> Path | None:
    """'latest' → newest checkpoint in output_dir (None if there is none yet); a path → that checkpoint."""
    if not value:
        return None
    if value == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint {value}: no such checkpoint folder")
    return path


def task_state_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"task_state_{rank}.pt"


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, task_state: dict) -> Path:
    """Collective: every rank must call it, with its own task state ({} writes nothing)."""
    root = checkpoints_dir(output_dir)
    final, tmp = root / f"step_{step}", root / f".tmp-step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if task_state:
        torch.save(task_state, task_state_file(tmp, accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_task_state(checkpoint: Path, rank: int, task_name: str) -> dict:
    """This rank's saved task state; one line naming what is missing when the checkpoint cannot give it."""
    path = task_state_file(checkpoint, rank)
    if not path.is_file():
        raise ConfigError(
            f"{checkpoint}: no {path.name}, the state of task {task_name} for process {rank} (written before fmkit "
            "checkpointed task state, or by fewer processes); it cannot be resumed exactly: start over with "
            "--overwrite_output_dir true"
        )
    return torch.load(path, map_location="cpu", weights_only=False)
