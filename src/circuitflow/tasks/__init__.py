"""Tasks: what a dataset's examples are, how its corrupt pairs are made, and how its built-in
model is built. Every stage works from what a task provides and names nothing task-specific.

A task is a module of this package, listed in ``TASKS``. It provides:

- ``OPTIONS``: JSON-schema ``properties`` of its dataset options, with defaults, and
  ``settings(options)``: the options with the defaults filled in, checked together (an
  ``OptionError`` names the option). A config entry ``datasets: {name: {task: NAME,
  ...options}}`` is checked against both (``dataset_entry``).
- ``examples(options, n, seed) -> DataFrame``: ``example_id`` (0..n-1), ``prompt`` and ``answer``
  (text; the model sees prompt + answer, each tokenized on its own), ``spans`` (``{"role",
  "start", "end"}`` character spans over ``prompt + answer`` in order of precedence, covering
  every character: see ``circuitflow.token_roles``), ``class`` (a label, or None where the task
  or dataset has no classes) and ``class_role`` (the role of the position the class is about),
  plus columns of the task's own (``has_classes(options)`` says whether a dataset's examples
  carry classes), typed by ``COLUMNS`` (pyarrow fields; inferred where absent).
  Same options and seed, same table.
- ``FEATURES`` and ``pairs(options, feature, n, seed) -> DataFrame`` of ``n`` drawn pairs:
  ``clean_prompt``, ``clean_answer``, ``corrupt_prompt``, ``corrupt_answer`` (text) and, where
  the task has them, the clean example's ``spans`` and the ``clean_word`` and ``corrupt_word``
  it swapped (else the pair stage names the differing tokens); the corrupt example differs in that feature,
  and its answer is the right one for the corrupt prompt. ``PAIRS_GIVEN`` is True where the pairs
  are the user's own (each must pass the pair checks; a failure names its ``source_row``), False
  where they are drawn (failures are drawn again).
- ``tokenizer(options, texts, vocab_size)``: the tokenizer of its built-in model (from the
  dataset options, or learned from the training texts),
  and ``MODEL``: that model's architecture defaults (``training`` keys), or ``None`` for a task
  whose datasets are analysed with models of the user's own.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import jsonschema

from circuitflow.errors import ConfigError, OptionError

TASKS = ("tinysql", "sorting", "arithmetic", "prompts")


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return importlib.import_module(f"circuitflow.tasks.{name}")


def task_of(dataset) -> ModuleType:
    """The task module of a dataset entry."""
    return task_module(dataset["task"])


def dataset_entry(name: str, entry: dict) -> dict:
    """A ``datasets`` entry with every option of its task filled in, or a ConfigError naming
    the key at fault."""
    key = f"datasets.{name}"
    if not isinstance(entry, dict) or "task" not in entry:
        raise ConfigError(f"config key '{key}': needs a 'task' ({', '.join(TASKS)})")
    try:
        task = task_module(entry["task"])
    except ConfigError as e:
        raise ConfigError(f"config key '{key}.task': {e}") from None
    options = {k: v for k, v in entry.items() if k != "task"}
    known = ", ".join(sorted(task.OPTIONS)) or "none"
    unknown = sorted(set(options) - set(task.OPTIONS))
    if unknown:
        raise ConfigError(
            f"config key '{key}.{unknown[0]}': task {entry['task']} has no such option "
            f"(its options: {known})"
        )
    schema = {"type": "object", "properties": task.OPTIONS}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(options), key=str)
    if errors:
        where = ".".join([key, *map(str, errors[0].absolute_path)])
        raise ConfigError(f"config key '{where}': {errors[0].message}")
    try:
        return {"task": entry["task"], **task.settings(options)}
    except OptionError as e:
        raise ConfigError(f"config key '{key}.{e.option}': {e.problem}") from None
