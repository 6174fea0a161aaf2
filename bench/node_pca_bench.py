"""Node PCA: the stage (every head and MLP at every requested position) against one plain
forward pass over the same examples.

    python bench/node_pca_bench.py                     # the arithmetic built-in model's shape
    python bench/node_pca_bench.py --shape tinysql     # the TinySQL built-in model's shape

Random models and random tokens: the timings depend on the shapes only. Sites: each example's
class position plus ``n_useful`` useful-node positions, as the stage's defaults give them. The
forward pass runs the same examples, full length, with the logits, in batches of the same size.
Printed as one JSON object: the forward pass and the recording (best of ``--repeats``); the
recording with every node's scores, and the whole stage (loading the model, writing the tables
and plots too), best of 2.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from circuitflow.batching import right_padded
from circuitflow.models.tokenizer import train_tokenizer
from circuitflow.node_pca import analyse, find_sites, labelled_examples, record_sites, run_stage
from circuitflow.stage import Params
from circuitflow.tables import write_table

SHAPES = {
    # tasks/arithmetic.py MODEL; 6-digit questions (14 prompt + 8 answer tokens); the seed's
    # 300 questions per tricase class; class digit 3 read at its answer token (position 18);
    # useful nodes at the 8 answer positions.
    "arithmetic": dict(n_layers=3, n_heads=4, d_model=128, n_examples=900, prompt=(14, 14),
                       answer=(8, 8), class_position=18, useful=list(range(14, 22))),
    # The TinySQL built-in model (config.yaml training section) on ~60-token examples; the
    # class at an answer token; useful nodes at 20 positions.
    "tinysql": dict(n_layers=3, n_heads=4, d_model=64, n_examples=500, prompt=(40, 50),
                    answer=(10, 16), class_position=45, useful=list(range(30, 50))),
}
PCA = {"n_components": 6, "roles": ["class"], "offset": 0, "useful_positions": True,
       "max_nodes_plotted": 12, "cv_folds": 5, "seed": 0, "batch_size": 64, "tag_min_ari": 0.5}


def build(shape: dict, directory: Path) -> Path:
    """A random GPT-2 of ``shape`` saved with a tokenizer, and clean/examples tables."""
    tokenizer = train_tokenizer(["0123456789+-=*"], vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=shape["n_layers"], n_head=shape["n_heads"],
                        n_embd=shape["d_model"], vocab_size=len(tokenizer), n_positions=256,
                        bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    rng = np.random.default_rng(0)
    clean, labels = [], []
    for i in range(shape["n_examples"]):
        n_prompt, n_answer = (int(rng.integers(lo, hi + 1)) for lo, hi in (shape["prompt"],
                                                                             shape["answer"]))
        roles = ["prompt"] * n_prompt + ["answer"] * n_answer
        roles[shape["class_position"]] = "class_digit"
        clean.append({
            "example_id": i, "correct": True,
            "prompt_token_ids": rng.integers(1, len(tokenizer), n_prompt).tolist(),
            "answer_token_ids": rng.integers(1, len(tokenizer), n_answer).tolist(),
            "token_roles": roles,
        })
        labels.append({"example_id": i, "class": f"T{8 + i % 3}", "class_role": "class_digit"})
    write_table(pd.DataFrame(clean), directory / "clean.parquet")
    write_table(pd.DataFrame(labels), directory / "examples.parquet")
    useful = [{"position": p, "layer": 0, "is_head": True, "num": 0, "tags": ["Fail%:50"]}
              for p in shape["useful"]]
    (directory / "useful_nodes.json").write_text(json.dumps(useful))
    return directory


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="arithmetic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        directory = build(shape, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(directory / "model").eval()
        table = labelled_examples(directory / "clean.parquet", directory / "examples.parquet", "b")
        sites = find_sites(table, ["class"], 0, shape["useful"])
        tokens = table["tokens"].tolist()
        batches = [right_padded(tokens[i : i + PCA["batch_size"]], 0)
                   for i in range(0, len(tokens), PCA["batch_size"])]

        @torch.no_grad()
        def forward():
            for batch in batches:
                model(batch, attention_mask=torch.ones_like(batch))

        forward_s = best_of(args.repeats, forward)
        record_s = best_of(args.repeats, lambda: record_sites(model, tokens, sites, 64, 0))
        analyse_s = best_of(2, lambda: analyse(model, 0, table, sites, PCA))
        params = Params("node-pca", {
            "model": {"source": "local", "path": str(directory / "model"), "name": "bench"},
            "device": "cpu", "dataset": {"name": "bench", "task": "bench"}, "pca": PCA,
            "plots": {"dpi": 150},
        })
        out = directory / "pca"
        outputs = {name: str(out / name) for name in (
            "summary.parquet", "points.parquet", "tags.json", "scatter.png", "page.html",
            "heatmap.png")}
        paths = dict(zip(("summary", "points", "tags", "scatter", "scatter_page", "heatmap"),
                         outputs.values()))
        stage_s = best_of(2, lambda: run_stage(
            params, clean=str(directory / "clean.parquet"),
            examples=str(directory / "examples.parquet"),
            useful=str(directory / "useful_nodes.json"), **paths))
    n_nodes = shape["n_layers"] * (shape["n_heads"] + 1)
    print(json.dumps({
        "shape": args.shape, "threads": args.threads, "n_examples": len(tokens),
        "n_sites": len(sites), "n_nodes": n_nodes, "n_analyses": n_nodes * len(sites),
        "forward_s": round(forward_s, 3), "record_s": round(record_s, 3),
        "record_and_scores_s": round(analyse_s, 2), "stage_s": round(stage_s, 2),
        "stage_over_forward": round(stage_s / forward_s, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
