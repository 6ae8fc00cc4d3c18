"""Registry of objectives: a new task is one decorated class, and registry-wide tests pick it up."""

from __future__ import annotations

from fmkit.errors import ConfigError
from fmkit.tasks.base import BatchCount, Task

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    _import_builtin_tasks()
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is unknown; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _import_builtin_tasks() -> None:
    from fmkit.tasks import clip, clm, mlm, pretext  # noqa: F401


__all__ = ["BatchCount", "Task", "TASKS", "get_task", "register_task"]
