"""Mean ablation of many candidate circuits at once: each batch row is one (circuit, pair).

A circuit is a set of prunable nodes: every head, and every MLP when MLPs are prunable. In the
model pruned to a circuit, a node outside it has its output replaced, at every position, by its
mean over the reference prompts at that position; a node inside it keeps its own output at its
kept positions and is replaced at the others. A head's output is its d_head slice of the input
of the attention output projection (z); an MLP's is the MLP module's output. The metric of a
circuit is the mean over pairs of logit(clean answer) - logit(corrupt answer) at the clean
prompt's last position.

Hooks on those modules replace the outputs where each row's mask ([rows, positions, heads])
says. A candidate then costs much less than a plain forward pass of its circuit, for the same
numbers:
- the blocks are called one by one, with the arguments the model passes them (recorded once),
  and a candidate starts at the lowest layer where it differs from the current circuit: the
  residual stream entering that layer is the current circuit's, computed once and kept until
  the current circuit changes below it;
- the metric needs two logits at one position: the final norm and two unembedding rows there;
- the last block's output is read at the last position only, so after its attention (which
  needs every position's keys and values) it runs there only: hooks cut the inputs of its
  output projection and of its MLP's norm to that position, and the block's residual sums
  broadcast;
- a candidate that differs from the current circuit only in the last layer leaves everything up
  to that layer's attention output projection as it is: the last block's attention runs once,
  and per candidate only the rest of the block at the last position.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Self

import torch

from circuitflow import nodes as node_names
from circuitflow.ablation.layout import Layout, layout_of
from circuitflow.batching import Batches
from circuitflow.eap.batches import PairBatch
from circuitflow.errors import ModelLoadError

# Where the supported models (GPT-2, GPT-Neo; Llama, Qwen2) keep the norm in front of a block's
# MLP and the final norm; every one of them computes a block as
# h = x + attention(norm1(x)), out = h + mlp(norm2(h)).
MLP_NORMS = ("ln_2", "post_attention_layernorm")
FINAL_NORMS = ("ln_f", "norm")


def prunable_nodes(layout: Layout, include_mlps: bool) -> list[str]:
    """Node names in model order: per layer its heads, then its MLP if MLPs are prunable."""
    names = []
    for layer in range(layout.n_layers):
        names += node_names.layer_nodes(layer, layout.n_heads)[: None if include_mlps else -1]
    return names


def replace_heads(z: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``z`` [rows, positions, heads * d_head] with head h at (row, position) replaced by ``mean``
    [..., positions, heads, d_head] where ``keep`` [rows, positions, heads] is False."""
    split = z.reshape(*z.shape[:-1], keep.shape[-1], -1)
    return torch.where(keep[..., None], split, mean).reshape(z.shape)


def replace_mlp(out: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``out`` [rows, positions, d_model] replaced by ``mean`` where ``keep`` is False."""
    return torch.where(keep[..., None], out, mean)


def _submodule(model, parent: str, names: tuple[str, ...]) -> torch.nn.Module:
    for name in names:
        try:
            return model.get_submodule(f"{parent}.{name}")
        except AttributeError:
            continue
    raise ModelLoadError(
        f"model type {model.config.model_type!r}: {parent} has none of {', '.join(names)}; "
        "pruning knows GPT-2, GPT-Neo and Llama/Qwen2-style blocks only"
    )


@dataclass
class _Rows:
    """What the hooks do in one block, to each row of a pass."""

    layer: int
    heads: torch.Tensor  # [R, T, heads]: where each head keeps its own z (T = 1 with ``last``)
    head_means: torch.Tensor  # [..., T, heads, d_head]: what replaces it elsewhere
    mlp: torch.Tensor | None  # [R, T]: where the MLP keeps its output; None: not prunable
    mlp_means: torch.Tensor | None  # [..., T, d_model]
    last: torch.Tensor | None  # [R]: the one position computed after the attention, if any


class CircuitRunner:
    """Metrics of candidate circuits over every pair of ``batch``.

    ``keep_at`` [len(nodes), pairs, positions] (bool): where a node of the circuit keeps its own
    output, for the nodes ``prunable_nodes(layout_of(model), include_mlps)``. ``reference``:
    token ids [pairs, positions], as long as the pairs' prompts, whose outputs are averaged per
    position (the clean or the corrupt prompts); None replaces by zero. ``batch_size``: rows
    (circuit, pair) per forward pass, 0 for all of a call's rows (halved for good on CUDA
    out-of-memory). Use as a context manager: the model stays hooked until it closes.
    """

    @torch.no_grad()
    def __init__(
        self, model, batch: PairBatch, keep_at: torch.Tensor, reference: torch.Tensor | None,
        include_mlps: bool, batch_size: int = 0,
    ):
        self.model = model
        self.device = next(model.parameters()).device
        self.layout = layout = layout_of(model)
        self.nodes = prunable_nodes(layout, include_mlps)
        if tuple(keep_at.shape) != (len(self.nodes), *batch.clean.shape):
            raise ValueError(f"keep_at is {tuple(keep_at.shape)}: not [nodes, pairs, positions]")
        self.batch = batch
        self.n_pairs, self.width = batch.clean.shape
        self._rows_per_pass = batch_size or sys.maxsize
        L, H = layout.n_layers, layout.n_heads
        self._blocks = [model.get_submodule(layout.block(l)) for l in range(L)]
        self._head_inputs = [model.get_submodule(layout.head_input(l)) for l in range(L)]
        self._mlps = [model.get_submodule(layout.mlp_output(l)) for l in range(L)]
        self._mlp_norms = [_submodule(model, layout.block(l), MLP_NORMS) for l in range(L)]
        self._final_norm = _submodule(model, model.base_model_prefix, FINAL_NORMS)

        # Node indices: layer l's heads, then its MLP when prunable.
        stride = H + include_mlps
        keep_at = keep_at.to(self.device)
        self._node_layer = torch.arange(len(self.nodes), device=self.device) // stride
        self._head_nodes = [torch.arange(l * stride, l * stride + H, device=self.device) for l in range(L)]
        self._mlp_node = [l * stride + H if include_mlps else None for l in range(L)]
        self._heads_at = [keep_at[nodes].permute(1, 2, 0) for nodes in self._head_nodes]
        self._mlp_at = [None if node is None else keep_at[node] for node in self._mlp_node]

        unembed = model.get_output_embeddings()
        self._direction = unembed.weight[batch.clean_answer] - unembed.weight[batch.corrupt_answer]
        self._bias = (
            torch.zeros(len(batch), device=self.device) if unembed.bias is None
            else unembed.bias[batch.clean_answer] - unembed.bias[batch.corrupt_answer]
        )

        self._head_means, self._mlp_means = self._means(reference)
        self._block_args = self._record_block_arguments()
        embeddings, diffs = self._full_run()
        self.full_metric = float(diffs.mean())
        self._prefixes = {0: embeddings}  # block -> residual entering it under self._base
        self._base = None
        self._last_block = None  # the last block's input and z at each pair's last position
        self._active: _Rows | None = None
        self._hooks = [m.register_forward_pre_hook(self._head_hook(l))
                       for l, m in enumerate(self._head_inputs)]
        self._hooks += [m.register_forward_pre_hook(self._cut_hook(l))
                        for l, m in enumerate(self._mlp_norms)]
        self._hooks += [m.register_forward_hook(self._mlp_hook(l))
                        for l, m in enumerate(self._mlps) if include_mlps]

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- candidates --------------------------------------------------------------------------

    @torch.no_grad()
    def metrics(self, circuits: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Mean logit difference [C] of each circuit of ``circuits`` [C, nodes] (bool).

        ``base`` is the current circuit: a candidate runs from the lowest layer in which it
        differs from it, on the residual stream ``base`` gives there.
        """
        circuits, base = circuits.to(self.device), base.to(self.device)
        self._rebase(base)
        top = self.layout.n_layers - 1
        start = torch.where(circuits != base, self._node_layer, top).amin(dim=1)
        n_circuits = len(circuits)
        circuit = torch.arange(n_circuits, device=self.device).repeat_interleave(self.n_pairs)
        pair = torch.arange(self.n_pairs, device=self.device).repeat(n_circuits)
        # Rows by start layer: a pass adds each row to the others at its own layer.
        rows = torch.argsort(start[circuit], stable=True)

        def process(rows):
            c, e = circuit[rows], pair[rows]
            in_top = start[c] == top
            diff = torch.empty(len(rows), device=self.device)
            if in_top.any():
                diff[in_top] = self._last_layer_diffs(circuits[c[in_top]], e[in_top])
            if not in_top.all():
                lower = ~in_top
                diff[lower] = self._diffs(circuits[c[lower]], e[lower], start[c[lower]])
            return c, diff

        total = torch.zeros(n_circuits, device=self.device)
        for c, diff in self._map(rows, process):
            total.index_add_(0, c, diff)
        return total / self.n_pairs

    def _diffs(self, circuits, pairs, start) -> torch.Tensor:
        """Logit differences of rows (circuit, pair) whose circuits first differ from the base
        in layer ``start`` (ascending): blocks from the lowest start up, each row joining at
        its own."""
        hidden = None
        for block in range(int(start[0]), self.layout.n_layers):
            joined = 0 if hidden is None else len(hidden)
            joining = int((start == block).sum())
            if joining:
                entering = self._prefix(block)[pairs[joined : joined + joining]]
                hidden = entering if hidden is None else torch.cat([hidden, entering])
            n = len(hidden)
            last = self.batch.last[pairs[:n]] if block == self.layout.n_layers - 1 else None
            hidden = self._run_block(block, hidden, self._rows(block, circuits[:n], pairs[:n], last))
        last = hidden[torch.arange(len(hidden), device=self.device), self.batch.last[pairs]]
        return self._logit_diffs(self._final_norm(last), pairs)

    def _last_layer_diffs(self, circuits, pairs) -> torch.Tensor:
        """Logit differences of rows whose circuits differ from the base in the last layer
        only: the rest of the last block after its attention, at the last position."""
        top = self.layout.n_layers - 1
        block_input, z = self._last_block_inputs()
        rows = self._rows(top, circuits, pairs, self.batch.last[pairs])
        # The hooks stay inactive: the replacements are made here.
        hidden = block_input[pairs, None] + self._head_inputs[top](
            replace_heads(z[pairs, None], rows.heads, rows.head_means)
        )
        out = self._mlps[top](self._mlp_norms[top](hidden))
        if rows.mlp is not None:
            out = replace_mlp(out, rows.mlp, rows.mlp_means)
        return self._logit_diffs(self._final_norm((hidden + out)[:, 0]), pairs)

    def _logit_diffs(self, final: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """logit(clean answer) - logit(corrupt answer) from final-norm outputs [R, d_model]."""
        return (final * self._direction[pairs]).sum(-1) + self._bias[pairs]

    # -- the current circuit's residual stream ------------------------------------------------

    def _rebase(self, base: torch.Tensor) -> None:
        """Forget what ``base`` changes: the residual stream above its lowest changed layer."""
        if self._base is not None and not torch.equal(base, self._base):
            changed = int(self._node_layer[base != self._base].min())
            self._prefixes = {b: v for b, v in self._prefixes.items() if b <= changed}
            if changed < self.layout.n_layers - 1:
                self._last_block = None
        self._base = base.clone()

    def _prefix(self, block: int) -> torch.Tensor:
        """[pairs, positions, d_model]: the residual stream entering ``block`` under the base."""
        known = max(b for b in self._prefixes if b <= block)
        everyone = torch.arange(self.n_pairs, device=self.device)
        for b in range(known, block):
            hidden = self._prefixes[b]

            def process(rows, b=b, hidden=hidden):
                base = self._base.expand(len(rows), -1)
                return self._run_block(b, hidden[rows], self._rows(b, base, rows))

            self._prefixes[b + 1] = torch.cat(self._map(everyone, process))
        return self._prefixes[block]

    def _last_block_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's input and its heads' z (before any replacement) at each pair's last
        position, under the base."""
        if self._last_block is None:
            top = self.layout.n_layers - 1
            hidden = self._prefix(top)

            def process(rows):
                z = []
                # Ahead of the replacing hook: z as the heads computed it.
                record = self._head_inputs[top].register_forward_pre_hook(
                    lambda m, a: z.append(a[0]), prepend=True)
                last = self.batch.last[rows]
                try:
                    base = self._base.expand(len(rows), -1)
                    self._run_block(top, hidden[rows], self._rows(top, base, rows, last))
                finally:
                    record.remove()
                everyone = torch.arange(len(rows), device=self.device)
                return hidden[rows, last], z[0][everyone, last]

            parts = self._map(torch.arange(self.n_pairs, device=self.device), process)
            self._last_block = tuple(torch.cat(p) for p in zip(*parts))
        return self._last_block

    def _run_block(self, block: int, hidden: torch.Tensor, rows: _Rows) -> torch.Tensor:
        """``block`` on ``hidden`` [R, positions, d_model], its rows ablated as ``rows`` says
        (where ``rows.last`` is set, only those positions of the output are right)."""
        args, kwargs = self._block_args[block]
        self._active = rows
        try:
            out = self._blocks[block](hidden, *args, **kwargs)
        finally:
            self._active = None
        return out[0] if isinstance(out, tuple) else out  # GPT-Neo's blocks return a tuple

    # -- the hooks ---------------------------------------------------------------------------

    def _rows(self, layer: int, circuits: torch.Tensor, pairs: torch.Tensor,
              last: torch.Tensor | None = None) -> _Rows:
        """The replacements in ``layer`` for rows (circuit ``circuits[r]``, pair ``pairs[r]``),
        at every position, or at position ``last[r]`` only."""
        heads = self._heads_at[layer][pairs] & circuits[:, self._head_nodes[layer]][:, None, :]
        head_means, mlp_means = self._head_means[layer], self._mlp_means[layer]
        node = self._mlp_node[layer]
        mlp = None if node is None else self._mlp_at[layer][pairs] & circuits[:, node, None]
        if last is not None:
            everyone = torch.arange(len(pairs), device=self.device)
            heads, head_means = heads[everyone, last, None], head_means[last, None]
            if mlp is not None:
                mlp, mlp_means = mlp[everyone, last, None], mlp_means[last, None]
        return _Rows(layer, heads, head_means, mlp, mlp_means, last)

    def _at_last(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._active
        return x[torch.arange(len(x), device=self.device), rows.last, None]

    def _head_hook(self, layer: int):
        def hook(module, args):
            rows = self._active
            if rows is None or rows.layer != layer:
                return None
            z = args[0] if rows.last is None else self._at_last(args[0])
            return (replace_heads(z, rows.heads, rows.head_means),)

        return hook

    def _cut_hook(self, layer: int):
        """Where only the last positions count, the MLP runs there only."""
        def hook(module, args):
            rows = self._active
            if rows is None or rows.layer != layer or rows.last is None:
                return None
            return (self._at_last(args[0]),)

        return hook

    def _mlp_hook(self, layer: int):
        def hook(module, args, out):
            rows = self._active
            if rows is None or rows.layer != layer or rows.mlp is None:
                return None
            return replace_mlp(out, rows.mlp, rows.mlp_means)

        return hook

    # -- runs done once ----------------------------------------------------------------------

    def _map(self, items: torch.Tensor, process) -> list:
        """``process`` slices of ``items``, at most the rows per pass each; a CUDA out-of-memory
        error halves that for good."""
        batches = Batches(min(self._rows_per_pass, len(items)))
        size = batches.size
        results = batches.map(items, process)
        if batches.size < size:
            self._rows_per_pass = batches.size
        return results

    def _record_block_arguments(self) -> list[tuple[tuple, dict]]:
        """The arguments besides the hidden states that the model passes each block, for inputs
        of this width. Recorded with one row: masks and position embeddings then broadcast
        over any number of rows."""
        recorded = {}

        def keeper(block):
            def keep(module, args, kwargs):
                recorded[block] = (args[1:], dict(kwargs))

            return keep

        handles = [b.register_forward_pre_hook(keeper(i), with_kwargs=True)
                   for i, b in enumerate(self._blocks)]
        try:
            self.model(self.batch.clean[:1], use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return [recorded[b] for b in range(len(self._blocks))]

    def _full_run(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream entering block 0 [pairs, positions, d_model], and each pair's
        logit difference on the model as it is."""
        base_model = self.model.get_submodule(self.model.base_model_prefix)

        def process(rows):
            seen = []
            handle = self._blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            try:
                final = base_model(self.batch.clean[rows], use_cache=False).last_hidden_state
            finally:
                handle.remove()
            last = final[torch.arange(len(rows), device=self.device), self.batch.last[rows]]
            return seen[0], self._logit_diffs(last, rows)

        parts = self._map(torch.arange(self.n_pairs, device=self.device), process)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _means(self, reference: torch.Tensor | None):
        """Per layer: the heads' z [positions, heads, d_head] and the MLP's output [positions,
        d_model] (None if not prunable), averaged at each position over the reference prompts
        that reach it; zero without reference prompts."""
        layout = self.layout
        head_shape = (self.width, layout.n_heads, layout.d_head)
        prunable = [node is not None for node in self._mlp_node]
        if reference is None:
            heads = [torch.zeros(head_shape, device=self.device) for _ in range(layout.n_layers)]
            d_model = self.model.config.hidden_size
            return heads, [torch.zeros(self.width, d_model, device=self.device) if p else None
                           for p in prunable]
        reference = reference.to(self.device)
        real = torch.arange(self.width, device=self.device) < (self.batch.last + 1)[:, None]
        base_model = self.model.get_submodule(self.model.base_model_prefix)

        def process(rows):
            sums = {}

            def adder(key):
                def add(value):
                    sums[key] = (value * real[rows, :, None]).sum(0)

                return add

            handles = []
            for l in range(layout.n_layers):
                add_z = adder(("z", l))
                handles.append(self._head_inputs[l].register_forward_pre_hook(
                    lambda m, a, add=add_z: add(a[0])))
                if prunable[l]:
                    add_out = adder(("mlp", l))
                    handles.append(self._mlps[l].register_forward_hook(
                        lambda m, a, out, add=add_out: add(out)))
            try:
                base_model(reference[rows], use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            return sums

        parts = self._map(torch.arange(self.n_pairs, device=self.device), process)
        count = real.sum(0).clamp(min=1)[:, None]

        def mean(key):
            return sum(part[key] for part in parts) / count

        heads = [mean(("z", l)).view(head_shape) for l in range(layout.n_layers)]
        mlps = [mean(("mlp", l)) if p else None for l, p in enumerate(prunable)]
        return heads, mlps
