"""EAP and EAP-IG on one batch against one plain forward + backward pass of the same batch.

    python bench/eap_bench.py            # CPU, a random model shaped like the built-in one
    python bench/eap_bench.py --bm1      # a random BM1-sized GPT-Neo (meant for a GPU)

The plain pass is the model's own forward on the clean prompts and the backward of the metric
(mean logit difference), once with weight gradients (a training step) and once with the weights
frozen, as EAP runs. One EAP batch is a corrupt forward pass, a clean forward pass and a backward
pass with every edge's score accumulated in it; EAP-IG repeats the forward/backward per step.
Times are medians of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoConfig

from circuitflow.eap.attribution import attribute
from circuitflow.eap.batches import PairBatch, logit_diff
from circuitflow.eap.bridge import EdgeModel
from circuitflow.models.tokenizer import train_tokenizer

SHAPES = {
    # The built-in model's shape (config.yaml training section), prompts cut before the answer word.
    "builtin": dict(
        config=lambda: GPT2Config(
            n_layer=3, n_head=4, n_embd=64, vocab_size=2048, n_positions=256
        ),
        tokens=50,
    ),
    # BM1: TinyStories-Instruct-2Layers-33M plus the fine-tunes' added pad token.
    "bm1": dict(
        config=lambda: GPTNeoConfig(
            num_layers=2, num_heads=16, hidden_size=1024, vocab_size=50258,
            attention_types=[[["global", "local"], 1]], window_size=256,
            max_position_embeddings=2048, intermediate_size=4096,
        ),
        tokens=90,
    ),
}


def timed(fns: dict, device: str, repeats: int) -> dict:
    """Median seconds of each function; rounds alternate between them, so that a busy machine
    slows them alike."""
    times = {name: [] for name in fns}
    for round in range(repeats + 1):  # round 0 warms up: kernels, allocator
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if round:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bm1", action="store_true", help="BM1-sized GPT-Neo instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--batch-size", type=int, default=30, help="pairs per batch")
    parser.add_argument("--tokens", type=int, help="prompt length in tokens")
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES["bm1" if args.bm1 else "builtin"]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(shape["config"]()).to(args.device).eval()
    vocab = hf.config.vocab_size
    n, t = args.batch_size, args.tokens or shape["tokens"]
    batch = PairBatch(
        clean=torch.randint(1, vocab, (n, t), device=args.device),
        corrupt=torch.randint(1, vocab, (n, t), device=args.device),
        last=torch.full((n,), t - 1, device=args.device),
        clean_answer=torch.randint(1, vocab, (n,), device=args.device),
        corrupt_answer=torch.randint(1, vocab, (n,), device=args.device),
    )

    rows = torch.arange(n, device=args.device)

    def plain():
        hf.zero_grad(set_to_none=True)
        logit_diff(hf(batch.clean).logits[rows, batch.last], batch).mean().backward()

    def plain_frozen():
        embeddings = hf.get_input_embeddings()(batch.clean).detach().requires_grad_(True)
        logits = hf(inputs_embeds=embeddings).logits
        logit_diff(logits[rows, batch.last], batch).mean().backward()

    def frozen(fn):
        """``fn`` on the model with its weights frozen, as EAP runs; the plain pass needs them."""
        def call():
            hf.requires_grad_(False)
            fn()
            hf.requires_grad_(True)
        return call

    # The bridge wants a saved tokenizer (it reloads it by name); the benchmark feeds token ids,
    # so any one does.
    with tempfile.TemporaryDirectory() as directory:
        train_tokenizer(["select name from orders"], vocab_size=300).save_pretrained(directory)
        model = EdgeModel(hf, AutoTokenizer.from_pretrained(directory))
    hf.requires_grad_(True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed({
        "plain": plain,
        "plain_frozen": frozen(plain_frozen),
        "eap": frozen(lambda: attribute(model, batch)),
        "eap_ig": frozen(lambda: attribute(model, batch, args.ig_steps)),
    }, args.device, args.repeats)
    plain_s, plain_frozen_s, eap_s, ig_s = seconds.values()
    g = model.graph
    report = {
        "model": "bm1-shaped GPT-Neo" if args.bm1 else "built-in-shaped GPT-2",
        "device": torch.cuda.get_device_name() if args.device == "cuda"
        else f"cpu ({args.threads} threads)",
        "per_head_hooks": "TransformerLens split hooks" if model.emulated is None else "derived",
        "batch": [n, t],
        "edges": int(g.edge_mask.sum()),
        "plain_fwd_bwd_s": round(plain_s, 4),
        "plain_fwd_bwd_frozen_weights_s": round(plain_frozen_s, 4),
        "eap_s": round(eap_s, 4),
        "eap_over_plain": round(eap_s / plain_s, 2),
        "eap_over_plain_frozen": round(eap_s / plain_frozen_s, 2),
        "ig_steps": args.ig_steps,
        "eap_ig_s": round(ig_s, 4),
        "eap_ig_over_plain": round(ig_s / plain_s, 2),
    }
    if args.device == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
