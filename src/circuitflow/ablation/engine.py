"""Batched ablations: thousands of interventions per forward pass, each decided by teacher forcing.

Decision. An example's tokens are x_0..x_{T-1}, the first n_p of them the prompt. An intervention
at position p fails when the argmax at some position t with max(n_p - 1, p) <= t <= T - 2 differs
from x_{t+1}: greedy decoding from the prompt extended to cover p would not reproduce the answer.
``logprob_drop`` is the mean over those t of log P_clean(x_{t+1}) - log P_ablated(x_{t+1}).

Interventions. One replaces, at position p of one example, the outputs of a set of nodes (heads
and MLPs, any number, in any layers) by a ``Replacement``'s values; ablating each node alone is
the case of sets of one.

Batches. A batch holds interventions at one position p; its rows are (example, node set) pairs.
Nothing before p changes (causal attention), so every row starts from the clean run's key/value
cache of positions < p, and runs in two steps: position p alone, with the edit; then the later
positions, which an edit whose lowest node is in layer l reaches only through the attention of
the layers above l. Up to layer l they stay clean, so the second step skips those blocks,
feeding the next one its clean input from the clean run:
- a set in the last layer reaches no later position: only position p's logits change, so
  before n_p - 1 it cannot fail and is decided without running at all;
- a set reaching down to the last layer but one reaches them only through the last layer's
  attention to p, so every other position's keys and values stay clean too: the last layer
  runs at the checked positions alone, after the clean cache with p's new keys and values;
- any other edit continues from p+1 with step one's cache in the layers above l.
Zeroing a position counts as an edit in layer 0: the first block reads position p's keys and
values from the clean embedding, so its output elsewhere stays clean.
Rows are right-padded and only real positions are read, which a causal LM computes without
looking at the padding after them. The unembedding is applied only at the checked positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from nnsight.modeling.transformers import TransformersModel
from tqdm.auto import tqdm
from transformers import DynamicCache

from circuitflow import nodes
from circuitflow.ablation.examples import AblationExamples
from circuitflow.ablation.layout import layout_of
from circuitflow.batching import Batches

log = logging.getLogger(__name__)

# CPU: batches of about this many tokens; larger ones gain nothing and cost memory.
CPU_TOKENS_PER_BATCH = 16384
# CUDA: the share of the free memory a batch may use (the measured cost per row is an estimate).
CUDA_MEMORY_SHARE = 0.5
CLEAN_BATCH = 16


@dataclass
class AblationResult:
    """One entry per intervention; ``node_set`` indexes the node sets (-1 for a position
    ablation)."""

    example: np.ndarray  # index into the AblationExamples
    node_set: np.ndarray
    position: np.ndarray
    failed: np.ndarray
    logprob_drop: np.ndarray

    @classmethod
    def empty(cls) -> "AblationResult":
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float32))


class AblationEngine:
    def __init__(
        self, model, tokenizer, examples: AblationExamples, batch_size: int = 0,
        show_progress: bool = True,
    ):
        self.model = model
        self.device = next(model.parameters()).device
        self.layout = layout_of(model)
        self.traced = TransformersModel(model, tokenizer=tokenizer)
        self.examples = examples.to(self.device)
        self.show_progress = show_progress
        layout = self.layout
        # Node j of a node set is node_names[j]: per layer its heads, then its MLP.
        self.node_names = [
            name for l in range(layout.n_layers) for name in nodes.layer_nodes(l, layout.n_heads)
        ]
        self._heads = [self.traced.get(layout.head_input(l)) for l in range(layout.n_layers)]
        self._mlps = [self.traced.get(layout.mlp_output(l)) for l in range(layout.n_layers)]
        self._blocks = [self.traced.get(layout.block(l)) for l in range(layout.n_layers)]
        self._final = self.traced.get(model.base_model_prefix)
        self.batch_size = batch_size
        if len(examples):
            self._clean_run()

    # -- the clean run ---------------------------------------------------------------------

    def _clean_run(self) -> None:
        """Key/value caches, log-probs of the answer tokens, and which examples are correct."""
        ex = self.examples
        n, width = ex.tokens.shape
        self.clean_logprob = torch.zeros(n, width, device=self.device)
        self.clean_ok = torch.ones(n, dtype=torch.bool, device=self.device)
        keys, values = [], []
        outputs = [[] for _ in range(self.layout.n_layers - 1)]
        chunk = self.batch_size or CLEAN_BATCH
        measure = self.device.type == "cuda" and not self.batch_size
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(n, start + chunk), device=self.device)
            if measure and start == 0:
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
            cache = DynamicCache(config=self.model.config)
            hidden = self._forward(rows, 0, cache, self._keep_block_outputs(outputs))
            r, t, wrong, logprob = self._judge(hidden, rows, 0, ex.n_prompt[rows] - 1)
            if measure and start == 0:
                per_row = (torch.cuda.max_memory_allocated(self.device) - base) / len(rows)
            self.clean_logprob[rows[r], t] = logprob
            self.clean_ok[rows[r[wrong]]] = False
            keys.append([layer.keys for layer in cache.layers])
            values.append([layer.values for layer in cache.layers])
        # Per layer [N, kv_heads, width, d_head]; chunks differ in width, so pad to ``width``.
        self.keys = [self._stack_padded([k[l] for k in keys], width) for l in range(len(keys[0]))]
        self.values = [
            self._stack_padded([v[l] for v in values], width) for l in range(len(values[0]))
        ]
        # Per block but the last [N, width, d]: what the blocks above an edit get later on.
        self.block_outputs = [self._stack_padded(out, width) for out in outputs]
        if not self.batch_size:
            self.batch_size = self._fitting_batch_size(per_row if measure else None)
        bad = int((~self.clean_ok).sum())
        if bad:
            log.warning(
                "%d of %d examples are not answered exactly in this run (numerics differ from "
                "the clean_accuracy run); they are left out", bad, n,
            )
        log.info("batch size %d interventions", self.batch_size)
        self.batches = Batches(self.batch_size)

    def _keep_block_outputs(self, kept: list[list]):
        """An edit that appends every block's output but the last's to ``kept[block]``."""
        def keep(positions):
            for block, out_list in zip(self._blocks, kept):
                out = block.output
                self._blocks_return_tuple = isinstance(out, tuple)  # GPT-Neo's do
                out_list.append((out[0] if isinstance(out, tuple) else out).save())

        return keep

    def _skip_through(self, rows: torch.Tensor, layer: int):
        """An edit that skips blocks 0..layer, their clean output feeding the next block."""
        def skip(positions):
            clean = self.block_outputs[layer]
            value = clean[rows[:, None], positions.clamp(max=clean.shape[1] - 1)]
            for block in self._blocks[: layer + 1]:
                block.skip((value,) if self._blocks_return_tuple else value)

        return skip

    @staticmethod
    def _stack_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
        """Concatenate along the batch, padding the positions (dimension -2) to ``width``."""
        padded = [
            torch.nn.functional.pad(part, (0, 0, 0, width - part.shape[-2])) for part in parts
        ]
        return torch.cat(padded)

    def _fitting_batch_size(self, bytes_per_row: float | None) -> int:
        width = self.examples.tokens.shape[1]
        if bytes_per_row is None:
            return max(1, CPU_TOKENS_PER_BATCH // width)
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return max(1, int(CUDA_MEMORY_SHARE * free / bytes_per_row))

    # -- one batch ---------------------------------------------------------------------------

    def _forward(self, rows, start, cache, edit=None, width=None, attention_mask=None):
        """Final hidden states [B, W, d] at positions start.. of examples ``rows`` (by default
        up to T-2: the last token's prediction is never checked), given the cache of positions
        < start. ``start`` is one position, or one per row with a left-padded cache that
        ``attention_mask`` describes. ``edit(positions)`` runs inside the trace."""
        ex = self.examples
        start = torch.as_tensor(start, device=self.device).expand(len(rows))
        width = width or int((ex.lengths[rows] - 1 - start).max())
        positions = start[:, None] + torch.arange(width, device=self.device)
        tokens = ex.tokens[rows[:, None], positions.clamp(max=ex.tokens.shape[1] - 1)]
        aligned = {} if attention_mask is None else {
            "attention_mask": attention_mask, "position_ids": positions,
        }
        # logits_to_keep=1: the model's own unembedding runs at one position only; _judge
        # applies it where the decision looks.
        with torch.no_grad(), self.traced.trace(
            tokens, past_key_values=cache, logits_to_keep=1, **aligned
        ):
            if edit is not None:
                edit(positions)
            hidden = self._final.output[0].save()
        return hidden

    @torch.no_grad()
    def _judge(self, hidden: torch.Tensor, rows: torch.Tensor, start, first: torch.Tensor):
        """For hidden states from position ``start`` on (one, or one per row), at every
        position t from ``first`` (per row) to T-2: (row, t, argmax is wrong, log-prob of the
        reference)."""
        ex = self.examples
        start = torch.as_tensor(start, device=self.device).expand(len(rows))
        t = start[:, None] + torch.arange(hidden.shape[1], device=self.device)
        last = ex.lengths[rows] - 2
        r, s = ((t >= first[:, None]) & (t <= last[:, None])).nonzero(as_tuple=True)
        t = t[r, s]
        target = ex.tokens[rows[r], t + 1]
        logits = self.model.get_output_embeddings()(hidden[r, s]).float()
        wrong = logits.argmax(-1) != target
        logprob = logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)
        return r, t, wrong, logprob

    def _tally(self, hidden, rows, start: int, first: torch.Tensor):
        """Per row: wrong predictions and the summed log-prob drop over the judged positions."""
        r, t, wrong, logprob = self._judge(hidden, rows, start, first)
        n = len(rows)
        n_wrong = torch.zeros(n, device=self.device).index_add_(0, r, wrong.float())
        drop = self.clean_logprob[rows[r], t] - logprob
        drop = torch.zeros(n, device=self.device).index_add_(0, r, drop)
        return n_wrong, drop

    def _prefix_cache(self, rows: torch.Tensor, end: int) -> DynamicCache:
        """The clean keys and values of positions < end."""
        layers = [(k[rows, :, :end], v[rows, :, :end]) for k, v in zip(self.keys, self.values)]
        return DynamicCache(layers, config=self.model.config)

    def _intervene(self, example, node_set, layer, p: int, edit_for):
        """Decide interventions at position p whose lowest edits are in ``layer``, in two
        steps: position p alone, with the edit, after the clean cache of earlier positions;
        then the later positions the edits reach, one group per layer."""
        ex = self.examples
        last = self.layout.n_layers - 1
        rows = torch.as_tensor(example, device=self.device)
        first = (ex.n_prompt[rows] - 1).clamp(min=p)
        cache = self._prefix_cache(rows, p)
        hidden = self._forward(rows, p, cache, edit_for(rows, node_set, p), width=1)
        n_wrong, drop = self._tally(hidden, rows, p, first)
        for l in np.unique(layer[layer < last]):
            group = torch.as_tensor(np.flatnonzero(layer == l), device=self.device)
            rerun = self._rerun_last_layer if l == last - 1 else self._continue
            start, hidden = rerun(rows[group], p, cache, group, int(l))
            if hidden is not None:
                more_wrong, more_drop = self._tally(
                    hidden, rows[group], start, first[group].clamp(min=p + 1)
                )
                n_wrong.index_add_(0, group, more_wrong)
                drop.index_add_(0, group, more_drop)
        # Positions never computed are the clean ones: right, and no drop.
        count = ex.lengths[rows] - 1 - first
        return (n_wrong > 0).cpu().numpy(), (drop / count).cpu().numpy()

    def _continue(self, rows, p: int, cache, group, layer: int):
        """Positions p+1.. in the blocks above ``layer``, after step one's cache (its rows
        ``group``)."""
        if p + 1 > int(self.examples.lengths[rows].max()) - 2:
            return p + 1, None
        layers = [(c.keys[group], c.values[group]) for c in cache.layers]
        cache = DynamicCache(layers, config=self.model.config)
        return p + 1, self._forward(rows, p + 1, cache, self._skip_through(rows, layer))

    def _rerun_last_layer(self, rows, p: int, cache, group, layer: int):
        """The checked positions after p, in the last layer only. Only that layer's attention
        sees position p, so every other position's keys, values and last-layer input are the
        clean ones: each row starts at its own first checked position, after a left-padded
        clean cache with position p's keys and values from step one."""
        ex = self.examples
        start = (ex.n_prompt[rows] - 1).clamp(min=p + 1)
        width = int((ex.lengths[rows] - 1 - start).max())
        if width <= 0:
            return start, None
        n_cached = int(start.max())
        padding = n_cached - start
        position = torch.arange(n_cached, device=self.device) - padding[:, None]
        index = rows[:, None], slice(None), position.clamp(min=0)
        k = self.keys[-1][index].transpose(1, 2)  # [B, kv_heads, n_cached, d_head]
        v = self.values[-1][index].transpose(1, 2)
        patch = torch.arange(len(rows), device=self.device), slice(None), padding + p
        k[patch] = cache.layers[-1].keys[group, :, -1]
        v[patch] = cache.layers[-1].values[group, :, -1]
        # The skipped layers' caches are never read; only their length counts.
        filler = k.new_zeros(()).expand_as(k)
        layers = [(filler, filler)] * (self.layout.n_layers - 1) + [(k, v)]
        mask = torch.cat([position >= 0, torch.ones_like(position[:, :1]).expand(-1, width)], 1)
        hidden = self._forward(
            rows, start, DynamicCache(layers, config=self.model.config),
            self._skip_through(rows, layer), width, attention_mask=mask.long(),
        )
        return start, hidden

    # -- many batches ------------------------------------------------------------------------

    def _run(self, example, node_set, position, layer, edit_for, desc: str, decided=None):
        """Run interventions (example[i], node_set[i], position[i]), each editing ``layer[i]``
        and above; ``edit_for(rows, node_sets, p)`` returns the edit of a batch at position p.
        ``decided`` marks entries known not to fail."""
        n = len(example)
        failed = np.zeros(n, dtype=bool)
        drop = np.zeros(n, dtype=np.float32)
        todo = np.ones(n, dtype=bool) if decided is None else ~decided
        # Examples by decreasing length, so a batch's rows have similar lengths; one layer's
        # edits together, so a batch's second step has few groups.
        rank = np.argsort(np.argsort(-self.examples.lengths.cpu().numpy(), kind="stable"))
        bar = tqdm(total=n, desc=desc, disable=not self.show_progress, mininterval=5)
        bar.update(n - int(todo.sum()))
        for p in np.unique(position[todo]):
            entries = np.flatnonzero(todo & (position == p))
            order = (node_set[entries], rank[example[entries]], layer[entries])
            entries = entries[np.lexsort(order)]

            def intervene(batch):
                return batch, self._intervene(
                    example[batch], node_set[batch], layer[batch], int(p), edit_for
                )

            for batch, (batch_failed, batch_drop) in self.batches.map(entries, intervene):
                failed[batch], drop[batch] = batch_failed, batch_drop
                bar.update(len(batch))
        bar.close()
        return AblationResult(example, node_set, position, failed, drop)

    def grid(self, n_sets: int, usable: torch.Tensor | None = None):
        """Every (example, node set, position) with a checked position at or after it, for the
        examples the clean run answers exactly; ``usable`` [N, T_max] may exclude more."""
        ex = self.examples
        n, width = ex.tokens.shape
        e, k, p = torch.meshgrid(
            torch.arange(n), torch.arange(n_sets), torch.arange(width), indexing="ij"
        )
        keep = (p <= ex.lengths.cpu()[e] - 2) & self.clean_ok.cpu()[e]
        if usable is not None:
            keep &= usable.cpu()[e, p]
        return e[keep].numpy(), k[keep].numpy(), p[keep].numpy()

    def ablate_positions(self) -> AblationResult:
        """Zero the residual stream after every block at one position."""
        if not len(self.examples):
            return AblationResult.empty()
        example, _, position = self.grid(1)

        def edit_for(rows, node_sets, p):
            def edit(positions):
                for block in self._blocks:
                    out = block.output
                    # GPT-Neo blocks return a tuple, the others the hidden states alone.
                    (out[0] if isinstance(out, tuple) else out)[:, 0] = 0

            return edit

        node_set = np.full(len(example), -1)
        layer = np.zeros(len(example), dtype=np.int64)  # see the module's docstring
        return self._run(example, node_set, position, layer, edit_for, "position ablation")

    def ablate_each_node(self, replacement) -> AblationResult:
        """Replace one node's output at one position, for every node, example and position
        that ``replacement`` has a value for; ``node_set`` is then the node's index."""
        n_nodes = len(self.node_names)
        example, node, position = self.grid(n_nodes, replacement.donor >= 0)
        return self.ablate(example, node, position, torch.eye(n_nodes, dtype=torch.bool),
                           replacement)

    def ablate(self, example, node_set, position, sets, replacement,
               desc: str = "node ablation") -> AblationResult:
        """Intervention i replaces, at position position[i] of example example[i], the output of
        every node in ``sets[node_set[i]]`` (bool [S, n_nodes], nodes in ``node_names`` order)
        by ``replacement``'s value (a ``Replacement``, see ``circuitflow.ablation.replacement``)."""
        if (replacement.donor.cpu()[example, position] < 0).any():
            raise ValueError("the replacement has no value for some interventions' positions")
        layout = self.layout
        sets = torch.as_tensor(sets, dtype=torch.bool, device=self.device)
        # The lowest layer with a node of the set: the blocks below it run clean.
        in_layer = sets.view(len(sets), layout.n_layers, layout.n_heads + 1).any(-1)
        layer = in_layer.byte().argmax(-1).cpu().numpy()[node_set]
        n_prompt = self.examples.n_prompt.cpu().numpy()[example]
        decided = (layer == layout.n_layers - 1) & (position < n_prompt - 1)

        def edit_for(rows, node_sets, p):
            ablated = sets[torch.as_tensor(node_sets, device=self.device)][:, None]
            return self.node_edit(rows, ablated, replacement)

        return self._run(example, node_set, position, layer, edit_for, desc, decided)

    def node_edit(self, rows: torch.Tensor, ablated: torch.Tensor, replacement):
        """An edit that replaces, wherever ``ablated`` [B, W or 1, n_nodes] is True, node j's
        output at the w-th position the trace computes for row b by ``replacement``'s value for
        example rows[b] at that position."""
        layout = self.layout

        def edit(positions):
            n, width = positions.shape
            mask = ablated.expand(n, width, -1).unflatten(-1, (layout.n_layers, -1))
            p = positions.clamp(max=replacement.donor.shape[1] - 1)
            donor = replacement.donor[rows[:, None], p]
            for l in range(layout.n_layers):
                b, w, h = mask[:, :, l, :-1].nonzero(as_tuple=True)
                if len(b):
                    z = self._heads[l].input.view(n, width, layout.n_heads, layout.d_head)
                    z[b, w, h] = replacement.heads[l][donor[b, w], p[b, w], h]
                b, w = mask[:, :, l, -1].nonzero(as_tuple=True)
                if len(b):
                    self._mlps[l].output[b, w] = replacement.mlps[l][donor[b, w], p[b, w]]

        return edit

    # -- the nodes' own outputs ------------------------------------------------------------

    @torch.no_grad()
    def node_outputs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every node's clean output at every position: per layer [N, T_max, H, d_head] for
        the heads and [N, T_max, d_model] for the MLP (zero at padding)."""
        ex = self.examples
        n, width = ex.tokens.shape
        layout = self.layout
        heads = [[] for _ in range(layout.n_layers)]
        mlps = [[] for _ in range(layout.n_layers)]
        for start in range(0, n, self.batch_size):
            rows = slice(start, start + self.batch_size)
            tokens = ex.tokens[rows]
            saved = []  # filled inside the trace: only .save()d values outlive it
            with self.traced.trace(tokens):
                for l in range(layout.n_layers):
                    saved.append((self._heads[l].input.save(), self._mlps[l].output.save()))
            real = torch.arange(width, device=self.device) < ex.lengths[rows, None]
            for l, (z, m) in enumerate(saved):
                z = (z * real[..., None]).view(*z.shape[:2], layout.n_heads, layout.d_head)
                heads[l].append(z)
                mlps[l].append(m * real[..., None])
        return [torch.cat(h) for h in heads], [torch.cat(m) for m in mlps]
