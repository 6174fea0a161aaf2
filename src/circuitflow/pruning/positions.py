"""Where a node of the circuit keeps its own output: query positions chosen by token role.

Config ``pruning.keep_positions`` maps a node name (``l3.h2``, ``l3.mlp``), or ``default`` for
every other node, to a list of roles. ``all`` is every position, ``end`` each clean prompt's
last one; any other role is the positions whose token has that role in the pairs table's
``token_roles`` column. At every other position the node is mean-ablated even inside the circuit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from circuitflow.errors import ConfigError, TableError

DEFAULT, ALL, END = "default", "all", "end"
KEY = "pruning.keep_positions"


def keep_positions(
    spec: Mapping[str, Sequence[str]], nodes: Sequence[str], lengths: Sequence[int],
    roles: Sequence[Sequence[str]] | None, width: int, source: str,
) -> torch.Tensor:
    """[len(nodes), pairs, width] bool: where each node keeps its own output in each pair.

    ``lengths``: each pair's prompt length; ``roles``: one role per token of each clean prompt
    (None when ``source``, the pairs file, has none).
    """
    unknown = [key for key in spec if key != DEFAULT and key not in nodes]
    if unknown:
        raise ConfigError(
            f"config key '{KEY}': {', '.join(map(repr, unknown))} is not a prunable node of this "
            f"model (nodes {nodes[0]} to {nodes[-1]}; MLPs only with pruning.include_mlps: true)"
        )
    lengths = torch.as_tensor(list(lengths))
    position = torch.arange(width)
    real = position < lengths[:, None]
    wanted = {role for key in spec for role in spec[key]} - {ALL, END}
    if wanted and roles is None:
        raise ConfigError(
            f"config key '{KEY}': role(s) {', '.join(sorted(wanted))} need the token_roles column, "
            f"which {source} lacks; use 'end' or 'all'"
        )
    masks = {ALL: real, END: position == (lengths - 1)[:, None]}
    for role in sorted(wanted):
        masks[role] = _role_mask(roles, role, lengths, width, source)
    default = spec.get(DEFAULT, [ALL])
    keep = torch.zeros(len(nodes), len(lengths), width, dtype=torch.bool)
    for i, node in enumerate(nodes):
        for role in spec.get(node, default):
            keep[i] |= masks[role]
    return keep


def _role_mask(roles, role: str, lengths: torch.Tensor, width: int, source: str) -> torch.Tensor:
    mask = torch.zeros(len(roles), width, dtype=torch.bool)
    for pair, (labels, length) in enumerate(zip(roles, lengths.tolist())):
        if len(labels) != length:
            raise TableError(
                f"{source}: pair {pair} (counting by pair_id from 0) has {len(labels)} token roles for "
                f"{length} clean prompt tokens; rebuild the pairs table"
            )
        mask[pair, : len(labels)] = torch.tensor([label == role for label in labels], dtype=torch.bool)
    if not mask.any():
        present = sorted({label for labels in roles for label in labels})
        raise ConfigError(
            f"config key '{KEY}': no token of {source} has the role {role!r} (roles there: "
            f"{', '.join(present)})"
        )
    return mask
