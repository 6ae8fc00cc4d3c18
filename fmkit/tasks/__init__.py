"""Registry of objectives: a name, the recipe that runs it and the module that defines it.

Listing names (`task_names`) imports nothing, and `get_task` imports only the module of the task asked
for, so an MLM run never loads open_clip or scikit-learn. A new built-in task is one decorated class plus
one line in BUILTIN; the registry-wide tests (tests/test_registry.py) then cover it. Tasks defined outside
fmkit register themselves with the decorator when their module is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fmkit.errors import ConfigError
from fmkit.tasks.base import BatchCount, Task


@dataclass(frozen=True)
class Entry:
    recipe: str
    """The script under recipes/ that runs it; a recipe with several tasks picks one with --task (or the
    recipe's own flag: `selector`)."""
    module: str


BUILTIN: dict[str, Entry] = {
    "mlm": Entry("mlm", "fmkit.tasks.mlm"),
    "clm": Entry("clm", "fmkit.tasks.clm"),
    "clip": Entry("clip", "fmkit.tasks.clip"),
    **{
        name: Entry("pretext", f"fmkit.tasks.pretext.{name}")
        for name in ("rotation", "jigsaw", "context", "colorization", "superres", "inpainting", "mim")
    },
    "simclr": Entry("contrastive", "fmkit.tasks.contrastive.simclr"),
    "moco": Entry("contrastive", "fmkit.tasks.contrastive.moco"),
    "byol": Entry("contrastive", "fmkit.tasks.contrastive.byol"),
    "npid": Entry("contrastive", "fmkit.tasks.contrastive.npid"),
    "deepcluster": Entry("contrastive", "fmkit.tasks.contrastive.deepcluster"),
    "cmc": Entry("contrastive", "fmkit.tasks.contrastive.cmc"),
    "text-classification": Entry("finetune", "fmkit.tasks.finetune.text"),
    "image-classification": Entry("finetune", "fmkit.tasks.finetune.image"),
}
"""Built-in tasks in the order recipes list them (the first of a recipe is its default)."""

SELECTORS = {"contrastive": "method"}
"""Recipes whose tasks are picked by another flag than --task: the contrastive recipe's objectives are its
methods, and --task stays free for what a downstream model is adapted to."""


def selector(recipe: str) -> str | None:
    """The flag, without dashes, that picks one of a recipe's tasks; None for a recipe of one task."""
    if recipe in SELECTORS:
        return SELECTORS[recipe]  # even while it has one method: the flag and preset names stay when more come
    return "task" if len(task_names(recipe)) > 1 else None


TASKS: dict[str, type[Task]] = {}
"""Tasks imported so far, by name."""


def register_task(cls: type[Task]) -> type[Task]:
    known = TASKS.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"task name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    entry = BUILTIN.get(cls.name)
    if entry is not None and cls.__module__ != entry.module:
        raise ValueError(f"task name {cls.name!r} is fmkit's built-in task from {entry.module}")
    TASKS[cls.name] = cls
    return cls


def task_names(recipe: str | None = None) -> list[str]:
    """Built-in task names (of one recipe), without importing any of them."""
    return [name for name, entry in BUILTIN.items() if recipe is None or entry.recipe == recipe]


def get_task(name: str) -> type[Task]:
    if name not in TASKS and name in BUILTIN:
        importlib.import_module(BUILTIN[name].module)
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is unknown; choose one of {', '.join(sorted({*BUILTIN, *TASKS}))}")
    return TASKS[name]


__all__ = ["BUILTIN", "BatchCount", "Task", "TASKS", "get_task", "register_task", "selector", "task_names"]
