"""Greedy pruning: circuitflow's batched search against the one-forward-pass-per-candidate loop
(the notebook's), on the same random model and pairs, checking that both decide the same.

    python bench/pruning_bench.py --shape bm1      # random BM1-sized GPT-Neo: 2 layers x 16 heads
    python bench/pruning_bench.py --shape gpt2-24  # narrow random GPT-2: 24 layers x 16 heads

Pairs are random prompts whose corrupt version differs in one token; the answers are the
model's top tokens on the clean and on the corrupt prompt, so the full model's logit difference
is positive. Every head is prunable and kept at every position; means over the corrupt prompts.
The loop, as the notebook runs it: one forward pass of all pairs per candidate, hooks on the
attention output projections, logits at every position (its means computed once, which the
notebook does per call). A second loop reads the unembedding at the last position only, to
show what that alone saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoConfig

from circuitflow.ablation.layout import layout_of
from circuitflow.batching import right_padded
from circuitflow.eap.batches import PairBatch
from circuitflow.pruning.intervention import CircuitRunner, prunable_nodes
from circuitflow.pruning.search import greedy_prune, visiting_order

SHAPES = {
    # TinyStories-Instruct-2Layers-33M plus the fine-tunes' added pad token.
    "bm1": lambda: GPTNeoConfig(
        num_layers=2, num_heads=16, hidden_size=1024, vocab_size=50258,
        attention_types=[[["global", "local"], 1]], window_size=256,
        max_position_embeddings=2048, intermediate_size=4096, initializer_range=0.05,
    ),
    # GPT-2 medium's 24 x 16 heads and vocabulary, a quarter of its width.
    "gpt2-24": lambda: GPT2Config(
        n_layer=24, n_head=16, n_embd=256, vocab_size=50257, n_positions=1024,
        initializer_range=0.05,
    ),
}


def build(shape: str, n_pairs: int, lengths: tuple[int, int], seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(SHAPES[shape]()).eval()
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    clean, corrupt = [], []
    for _ in range(n_pairs):
        ids = rng.integers(1, vocab, size=int(rng.integers(*lengths, endpoint=True))).tolist()
        other = list(ids)
        swap = int(rng.integers(1, len(ids) - 1))
        other[swap] = int(rng.integers(1, vocab))
        clean.append(ids)
        corrupt.append(other)
    last = torch.tensor([len(ids) - 1 for ids in clean])
    clean_t, corrupt_t = right_padded(clean, 0), right_padded(corrupt, 0)
    rows = torch.arange(n_pairs)
    with torch.no_grad():
        top_clean = model(clean_t).logits[rows, last].topk(2).indices
        top_corrupt = model(corrupt_t).logits[rows, last].topk(2).indices
    a = top_clean[:, 0]
    b = torch.where(top_corrupt[:, 0] != a, top_corrupt[:, 0], top_clean[:, 1])
    return model, PairBatch(clean_t, corrupt_t, last, a, b)


class NotebookLoop:
    """One forward pass of every pair per candidate, heads outside the circuit replaced by
    their per-position mean over the corrupt prompts."""

    def __init__(self, model, batch: PairBatch, last_position_only: bool):
        self.model, self.batch, self.last_only = model, batch, last_position_only
        layout = layout_of(model)
        self.n_heads, self.d_head = layout.n_heads, layout.d_head
        self.projections = [model.get_submodule(layout.head_input(l)) for l in range(layout.n_layers)]
        real = (torch.arange(batch.clean.shape[1]) <= batch.last[:, None]).float()[..., None]
        sums = []
        handles = [p.register_forward_pre_hook(lambda m, a: sums.append((a[0] * real).sum(0)))
                   for p in self.projections]
        with torch.no_grad():
            model(batch.corrupt)
        for h in handles:
            h.remove()
        self.means = [s / real.sum(0) for s in sums]  # per layer [positions, heads * d_head]
        self.full = self.metric(torch.ones(layout.n_layers * layout.n_heads, dtype=torch.bool))

    def metric(self, circuit: torch.Tensor) -> float:
        def replacer(layer):
            ablated = ~circuit[layer * self.n_heads : (layer + 1) * self.n_heads]

            def hook(module, args):
                z = args[0].clone().view(*args[0].shape[:2], self.n_heads, self.d_head)
                mean = self.means[layer].view(-1, self.n_heads, self.d_head)
                z[:, :, ablated] = mean[None, :, ablated]
                return (z.view(args[0].shape),)

            return hook

        handles = [p.register_forward_pre_hook(replacer(l)) for l, p in enumerate(self.projections)]
        rows = torch.arange(len(self.batch))
        try:
            with torch.no_grad():
                if self.last_only:
                    hidden = self.model.base_model(self.batch.clean).last_hidden_state
                    final = self.model.lm_head(hidden[rows, self.batch.last])
                else:
                    final = self.model(self.batch.clean).logits[rows, self.batch.last]
        finally:
            for h in handles:
                h.remove()
        b = self.batch
        return float((final[rows, b.clean_answer] - final[rows, b.corrupt_answer]).mean())

    def prune(self, order: list[int], threshold: float):
        """(node, score without it, removed) per step, and (wall, CPU) seconds per candidate."""
        circuit = torch.ones(len(order), dtype=torch.bool)
        steps, seconds = [], []
        for node in order:
            circuit[node] = False
            score, wall, cpu = timed(lambda: 100 * self.metric(circuit) / self.full)
            removed = 100 - score < threshold
            circuit[node] = not removed
            steps.append((node, score, removed))
            seconds.append((wall, cpu))
        return steps, np.array(seconds)


def timed(run):
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time
    moves less with the load."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bm1")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs=2, default=(16, 20), help="prompt tokens")
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="runs of circuitflow per chain")
    parser.add_argument("--sample", type=int, default=32,
                        help="candidates the last-position loop is timed on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, batch = build(args.shape, args.pairs, tuple(args.lengths))
    names = prunable_nodes(layout_of(model), include_mlps=False)
    order = visiting_order(names, "last_layer_first")

    loop = NotebookLoop(model, batch, last_position_only=False)
    reference, loop_times = loop.prune(order, args.threshold)
    # On a shared machine a long run catches load spikes: the median candidate is steadier.
    loop_cpu = float(np.median(loop_times[:, 1])) * len(order)
    report = {
        "shape": args.shape, "device": f"cpu ({args.threads} thread(s))", "pairs": len(batch),
        "mean_tokens": float((batch.last + 1).float().mean()), "width": batch.clean.shape[1],
        "candidates": len(order), "kept": int(sum(not r for *_, r in reference)),
        "threshold": args.threshold,
        "loop_wall_s": round(float(loop_times[:, 0].sum()), 2),
        "loop_cpu_s": round(float(loop_times[:, 1].sum()), 2),
        "loop_cpu_s_median_based": round(loop_cpu, 2),
    }

    # The same loop reading the unembedding at the last position only, timed on a sample of
    # the reference's own circuits.
    last_only = NotebookLoop(model, batch, last_position_only=True)
    circuit = torch.ones(len(order), dtype=torch.bool)
    circuits = []
    for node, _, removed in reference:
        trial = circuit.clone()
        trial[node] = False
        circuits.append(trial)
        circuit = trial if removed else circuit
    sample = np.random.default_rng(0).choice(len(order), min(args.sample, len(order)), replace=False)
    cpu_times, worst = [], 0.0
    for i in sample:
        score, _, cpu = timed(lambda i=i: 100 * last_only.metric(circuits[i]) / last_only.full)
        cpu_times.append(cpu)
        worst = max(worst, abs(score - reference[i][1]))
    report["loop_last_position_logits_cpu_s_median_based"] = round(
        float(np.median(cpu_times)) * len(order), 2)
    report["loop_last_position_logits_max_score_difference"] = worst

    keep = torch.ones(len(names), *batch.clean.shape, dtype=torch.bool)
    runs, mismatches = [], 0
    for chain in args.chains:
        setups, searches = [], []
        for _ in range(args.repeats):
            # Setup: means, the full model's metric, the blocks' arguments (the loop's own
            # setup is not timed either).
            runner, *setup = timed(
                lambda: CircuitRunner(model, batch, keep, batch.corrupt, include_mlps=False))
            with runner:
                result, *search = timed(lambda runner=runner, chain=chain: greedy_prune(
                    lambda c, base: 100 * runner.metrics(c, base) / runner.full_metric,
                    len(names), order, args.threshold, chain,
                ))
            ours = [(s.node, s.score_without, s.removed) for s in result.steps]
            same = [(n, r) for n, _, r in ours] == [(n, r) for n, _, r in reference]
            mismatches += not same
            setups.append(setup)
            searches.append(search)
        (wall, cpu), setup_cpu = np.min(searches, axis=0), np.min(setups, axis=0)[1]
        runs.append({
            "chain": chain, "wall_s": round(float(wall), 2), "cpu_s": round(float(cpu), 2),
            "setup_cpu_s": round(float(setup_cpu), 2),
            "speedup_cpu": round(loop_cpu / cpu, 1),
            "speedup_cpu_with_setup": round(loop_cpu / (cpu + setup_cpu), 1),
            "speedup_wall": round(float(loop_times[:, 0].sum()) / wall, 1),
            "evaluations": result.n_evaluations, "same_decisions": same,
            "max_score_difference": float(max(abs(a[1] - b[1]) for a, b in zip(ours, reference))),
        })
    report["circuitflow"] = runs
    json.dump(report, sys.stdout, indent=1)
    print()
    if mismatches:
        sys.exit(f"{mismatches} run(s) decided differently from the loop")


if __name__ == "__main__":
    main()
