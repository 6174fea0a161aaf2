"""Node ablation: the batched engine against the notebook's method (one greedy generate per
intervention), on the same examples, checking that both reach the same decisions.

    python bench/ablation_bench.py            # CPU, a random model shaped like the built-in one
    python bench/ablation_bench.py --bm1      # a random BM1-sized GPT-Neo (meant for a GPU)
    python bench/ablation_bench.py --n-examples 3 --sample 150   # a quick check (seconds)

The notebook's method is timed on a random sample of the interventions (all of them would take
hours) and extrapolated; its decisions on that sample must equal the engine's. Examples are
random prompts whose answer is the model's own greedy continuation, so every one is correct.
Mean ablation of every head and MLP at every position, as in the notebook.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch
from nnsight.modeling.transformers import TransformersModel
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoConfig

from circuitflow import nodes
from circuitflow.ablation.engine import AblationEngine
from circuitflow.ablation.examples import make_examples
from circuitflow.ablation.replacement import mean
from circuitflow.models.tokenizer import train_tokenizer

# Dense float32 peak without tensor cores (the engine runs strict float32), TFLOP/s.
FP32_PEAK_TFLOPS = {"H100 80GB HBM3": 67.0, "H100 PCIe": 51.0, "H200": 67.0, "A100": 19.5}

SHAPES = {
    # The built-in model's shape (config.yaml training section, models/training.py), ~60-token
    # examples.
    "builtin": dict(
        config=lambda: GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=2048,
                                  n_positions=256, activation_function="gelu",
                                  initializer_range=0.1),
        n_examples=50, prompt_tokens=(40, 50), answer_tokens=(10, 16),
    ),
    # BM1: TinyStories-Instruct-2Layers-33M plus the fine-tunes' added pad token.
    "bm1": dict(
        config=lambda: GPTNeoConfig(
            num_layers=2, num_heads=16, hidden_size=1024, vocab_size=50258,
            attention_types=[[["global", "local"], 1]], window_size=256,
            max_position_embeddings=2048, intermediate_size=4096, initializer_range=0.05,
        ),
        n_examples=50, prompt_tokens=(80, 92), answer_tokens=(12, 18),
    ),
}


def build(shape: dict, n_examples: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(shape["config"]()).to(device).eval()
    # nnsight wants a tokenizer; the benchmark feeds token ids, so any one does.
    tokenizer = train_tokenizer(["select name from orders"], vocab_size=300)
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    prompts, answers = [], []
    for _ in range(n_examples):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(*shape["prompt_tokens"]))]
        prompts.append(prompt)
        answers.append(greedy(model, prompt, rng.randint(*shape["answer_tokens"])))
    roles = [["x"] * (len(p) + len(a)) for p, a in zip(prompts, answers)]
    return model, tokenizer, make_examples(range(n_examples), prompts, answers, roles, pad_id=0)


@torch.no_grad()
def greedy(model, prompt, n_new):
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
        num_beams=1, eos_token_id=model.config.vocab_size + 1, pad_token_id=0,
    )
    return out[0, len(prompt):].tolist()


def notebook_decision(traced, model, layout, tokens, n_prompt, layer, head, p, value) -> bool:
    """The notebook's way: generate from the prompt extended to cover p, with the node replaced
    at p in the first (whole-prompt) forward pass; failed when the output is not the answer.
    Unlike the notebook, the node is the head's slice of the output projection's input; head
    is None for the MLP."""
    start = max(n_prompt, p + 1)
    ids = torch.tensor([tokens[:start]], device=model.device)
    d = layout.d_head
    with traced.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(tokens) - start,
        do_sample=False, num_beams=1, eos_token_id=model.config.vocab_size + 1, pad_token_id=0,
    ) as tracer:
        if head is not None:
            traced.get(layout.head_input(layer)).input[:, p, head * d:(head + 1) * d] = value
        else:
            traced.get(layout.mlp_output(layer)).output[:, p] = value
        out = tracer.result.save()
    return out[0, start:].tolist() != tokens[start:]


def engine_flops(model, examples, result, layers) -> float:
    """FLOPs (2 x multiply-adds) the engine's method needs, padding not counted: position p
    through every layer; then, for a node in layer l, the later positions through the layers
    above l (only the checked ones when l is the last layer but one); the unembedding at the
    checked positions. Attention over the context is counted at 4 x d_model per key."""
    config = model.config
    d, vocab, n_layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    per_layer = sum(p.numel() for n, p in model.named_parameters() if ".h.0." in n)
    lengths = examples.lengths.numpy()[result.example]
    n_prompt = examples.n_prompt.numpy()[result.example]
    p, l = result.position, layers[result.node_set]
    first_checked = np.maximum(n_prompt - 1, p)
    checked = lengths - 1 - first_checked
    # Last-layer nodes before the answer are decided without running.
    run = ~((l == n_layers - 1) & (p < n_prompt - 1))
    later = np.where(l == n_layers - 2, lengths - 1 - np.maximum(n_prompt - 1, p + 1),
                     np.where(l < n_layers - 2, lengths - 2 - p, 0))
    layers_above = n_layers - 1 - l
    token_layers = n_layers + later * layers_above
    context = (p + lengths) / 2  # keys a computed position attends to, on average
    flops = (2 * per_layer + 4 * d * context) * token_layers + 2 * d * vocab * checked
    return float(np.sum(flops[run]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bm1", action="store_true", help="BM1-sized GPT-Neo instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--n-examples", type=int)
    parser.add_argument("--sample", type=int, default=200,
                        help="interventions run the notebook's way (timed, decisions compared)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine picks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES["bm1" if args.bm1 else "builtin"]
    model, tokenizer, examples = build(shape, args.n_examples or shape["n_examples"], args.device)

    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    engine = AblationEngine(model, tokenizer, examples, args.batch_size, show_progress=False)
    replacement = mean(engine)
    result = engine.ablate_each_node(replacement)
    if args.device == "cuda":
        torch.cuda.synchronize()
    engine_s = time.perf_counter() - start
    assert engine.clean_ok.all(), "every example is the model's own continuation"

    # The notebook's method on a sample of the same interventions.
    traced = TransformersModel(model, tokenizer=tokenizer)
    parsed = [nodes.parse(name) for name in engine.node_names]
    layers = np.array([node.layer for node in parsed])
    heads = [node.head for node in parsed]
    rng = np.random.default_rng(0)
    sample = rng.choice(len(result.failed), min(args.sample, len(result.failed)), replace=False)
    tokens = [examples.tokens[e, : examples.lengths[e]].tolist() for e in range(len(examples))]
    mismatches = 0
    start = time.perf_counter()
    for i in sample:
        e, p = result.example[i], int(result.position[i])
        l, h = int(layers[result.node_set[i]]), heads[result.node_set[i]]
        donor = int(replacement.donor[e, p])
        value = (replacement.heads[l][donor, p, h] if h is not None
                 else replacement.mlps[l][donor, p])
        failed = notebook_decision(
            traced, model, engine.layout, tokens[e], int(examples.n_prompt[e]), l, h, p, value
        )
        mismatches += failed != result.failed[i]
    notebook_per_intervention = (time.perf_counter() - start) / len(sample)
    notebook_s = notebook_per_intervention * len(result.failed)

    last = layers[result.node_set] == layers.max()
    decided = last & (result.position < examples.n_prompt.numpy()[result.example] - 1)
    flops = engine_flops(model, examples, result, layers)
    report = {
        "model": "bm1-shaped GPT-Neo" if args.bm1 else "built-in-shaped GPT-2",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else
        f"cpu ({args.threads} threads)",
        "examples": len(examples),
        "mean_tokens": float(examples.lengths.float().mean()),
        "interventions": len(result.failed),
        "decided_without_forward": int(decided.sum()),
        "fail_rate_%": round(100 * float(result.failed.mean()), 2),
        "batch_size": engine.batch_size,
        "engine_s": round(engine_s, 2),
        "interventions_per_s": round(len(result.failed) / engine_s),
        "notebook_s_per_intervention": round(notebook_per_intervention, 4),
        "notebook_s_extrapolated": round(notebook_s),
        "speedup": round(notebook_s / engine_s, 1),
        "sample_checked": len(sample),
        "sample_failed": int(result.failed[sample].sum()),
        "decision_mismatches": int(mismatches),
        "engine_tflop": round(flops / 1e12, 3),
        "engine_tflop_per_s": round(flops / engine_s / 1e12, 3),
    }
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in FP32_PEAK_TFLOPS.items() if k in name), None)
        report["fp32_peak_tflop_per_s"] = peak
        report["fraction_of_fp32_peak"] = round(flops / engine_s / 1e12 / peak, 3) if peak else None
    json.dump(report, sys.stdout, indent=1)
    print()
    if mismatches:
        sys.exit(f"{mismatches} decisions differ from the notebook's method")


if __name__ == "__main__":
    main()
