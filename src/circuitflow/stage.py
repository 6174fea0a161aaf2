"""The contract between the workflow and the package: what each stage reads, runs and names.

A stage module declares ``STAGE = Stage(...)``: its named inputs and outputs (the ``name=path``
arguments of its ``run``) and the config keys it reads. The workflow derives everything else from
that one declaration: a rule's params are exactly the declared keys of that job's config
(``circuitflow.rules``), its code inputs are the package modules the stage imports, and the
stage receives its params as a mapping that refuses any key it did not declare.

Keys are dotted config paths (``eap.top_n``; a whole section is ``plots``). Three keys stand for
the job's own entries: ``model`` (where its model comes from: ``source``, ``path`` (filled for a
built-in model), ``id``, ``revision``, and ``name``), ``dataset`` (its ``datasets`` entry with
every task option, and ``name``) and ``recipe`` (how a built-in model is trained: ``training``
settings and the ``datasets`` it trains on). A key read only under some
setting is ``Only("eap.ig_steps", when=("eap.method", "eap-ig"))``. ``job`` names values of
the job itself that reach the stage as params of their own name: its wildcards (``feature``) or
what the rule computes from the config (the runs a sweep summary collects).

``circuitflow.registry.REGISTRY`` maps each command to its module; the command line and the
workflow both read it. The workflow reads a declaration from the module's source without
importing it (``circuitflow.rules.stage``), so its arguments are literals, tuples and ``Only``
calls, and ``run`` is a name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from circuitflow.errors import CircuitflowError
from circuitflow.registry import REGISTRY


class Only(NamedTuple):
    """A key read only when the key ``when[0]`` has the value ``when[1]``."""

    key: str
    when: tuple[str, object]


@dataclass(frozen=True)
class Stage:
    name: str  # the command (``python -m circuitflow NAME``); the rule is NAME with underscores
    run: Callable[..., None]  # run(params, **paths)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reads: tuple[str | Only, ...] = ()
    job: tuple[str, ...] = ()
    many: tuple[str, ...] = ()  # inputs that are lists of paths (``name=a b c``)

    @property
    def rule(self) -> str:
        return self.name.replace("-", "_")




ENTRIES = ("model", "dataset", "recipe")


def load(name: str) -> Stage:
    """The declaration of stage ``name`` (a ``REGISTRY`` key), importing its module."""
    declared = importlib.import_module(REGISTRY[name]).STAGE
    if declared.name != name:
        raise RuntimeError(f"{REGISTRY[name]}.STAGE is named {declared.name!r}, not {name!r}")
    return declared


class UndeclaredKey(CircuitflowError):
    """A stage read a config key its declaration does not list: a bug in that stage."""


class Params(Mapping):
    """A stage's params, read-only, refusing keys it did not declare (``get`` too: the error is
    no KeyError, so no default hides it)."""

    def __init__(self, stage: str, values: Mapping, prefix: str = ""):
        self._stage, self._values, self._prefix = stage, values, prefix

    def __getitem__(self, key: str):
        if key not in self._values:
            raise UndeclaredKey(
                f"stage {self._stage} reads '{self._prefix}{key}', which its STAGE declaration "
                "does not list: add it to `reads`"
            )
        value = self._values[key]
        # A job's own entries are plain mappings: their keys vary with the entry, not the stage.
        if isinstance(value, Mapping) and not (self._prefix == "" and key in ENTRIES):
            return Params(self._stage, value, f"{self._prefix}{key}.")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

