"""The task registry: ``build_task(config, tokenizer)`` for ``--task NAME``.

Adding a task: subclass ``Task`` in a module here, decorate it with ``@register("name")``
and import the module below.
"""
# Each module registers its tasks.
from . import anli, classification, ner, race, squad, superglue, superglue_qa, xnli  # noqa: F401
from .base import TASKS, Task, build_task, register

__all__ = ["TASKS", "Task", "build_task", "register"]
