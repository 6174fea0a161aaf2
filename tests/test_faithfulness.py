"""Circuit faithfulness by exact edge patching, on tiny random models."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.eap import attribution, faithfulness
from circuitflow.eap.batches import logit_diff
from circuitflow.eap.bridge import EdgeModel
from circuitflow.eap.faithfulness import patch_weights, patched_logit_diff, rank_edges
from circuitflow.errors import CircuitflowError
from circuitflow.stage import Params
from circuitflow.tables import read_table
from test_eap_attribution import eap_params, edge_model, random_batch, write_pairs


def faithfulness_params(directory, circuit_sizes):
    return Params("faithfulness", {
        "model": {"source": "local", "path": str(directory), "name": "tiny"}, "device": "cpu",
        "faithfulness": {"circuit_sizes": circuit_sizes},
    })


def float32_model(directory):
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    return EdgeModel(hf, AutoTokenizer.from_pretrained(directory))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo"])
def test_full_graph_scores_one_and_empty_graph_zero(tiny_model_dir, tmp_path, arch):
    directory = tiny_model_dir(arch)
    pairs = str(write_pairs(tmp_path / "pairs.parquet", seed=5))
    edges = str(tmp_path / "edges.parquet")
    attribution.run_stage(
        eap_params(directory), pairs=pairs, edges=edges,
        top_edges=str(tmp_path / "top.parquet"), results_json=str(tmp_path / "r.json"),
    )
    n_edges = read_table(edges)["upstream"].count() // 2
    out = tmp_path / "faithfulness.parquet"
    params = faithfulness_params(directory, [0, 3, n_edges, n_edges + 10])
    faithfulness.run_stage(params, pairs=pairs, edges=edges, out=str(out))
    table = read_table(out, ["circuit_size", "n_edges_in_circuit", "metric", "faithfulness"])
    assert table["n_edges_in_circuit"].tolist() == [0, 3, n_edges, n_edges]
    assert table["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert table["faithfulness"].iloc[2:].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert table["faithfulness"].iloc[1] != pytest.approx(0.0, abs=1e-3)


def test_removing_one_edge_matches_a_hand_made_patch(tiny_model_dir):
    """Patching only input → logits: the final norm reads the clean residual stream minus
    (clean − corrupt embeddings), written here with a plain TransformerLens hook."""
    directory = tiny_model_dir("gpt2")
    model = float32_model(directory)
    g = model.graph
    batch = random_batch(seed=6)
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        model.run(batch.corrupt, record=corrupt)
        clean_logits, cache = model.bridge.run_with_cache(batch.clean)
    everything = g.edges
    input_to_logits = (everything[0] == 0) & (everything[1] == g.logits_receiver)
    circuit = tuple(idx[~input_to_logits] for idx in everything)
    patched = patched_logit_diff(model, batch, corrupt, patch_weights(model, circuit))

    shift = cache["blocks.0.hook_resid_pre"] - corrupt[0]
    with torch.no_grad():
        final_residual = f"blocks.{g.n_layers - 1}.hook_resid_post"
        logits = model.bridge.run_with_hooks(
            batch.clean, fwd_hooks=[(final_residual, lambda x, hook: x - shift)]
        )
    torch.testing.assert_close(patched, logit_diff(logits, batch), rtol=0, atol=1e-5)
    assert not torch.allclose(patched, logit_diff(clean_logits, batch), atol=1e-3)


def test_ranking_uses_mean_absolute_score_and_rejects_foreign_edges(tiny_model_dir):
    directory = tiny_model_dir("gpt2")
    model = float32_model(directory)
    edges = pd.DataFrame({
        "batch": [0, 1, 0, 1],
        "upstream": ["input", "input", "l0.h1", "l0.h1"],
        "downstream": ["logits", "logits", "l0.mlp", "l0.mlp"],
        "score": [0.1, 0.1, -0.5, 0.3],
    })
    up, down = rank_edges(model, edges)
    assert [model.graph.upstream[i] for i in up] == ["input", "l0.h1"]  # |0.1| > |-0.1|
    with pytest.raises(CircuitflowError, match="not in this model's graph"):
        rank_edges(model, edges.assign(upstream="l7.h0"))
    with pytest.raises(CircuitflowError, match="does not have"):
        rank_edges(model, edges.assign(upstream="l1.h0", downstream="l0.mlp"))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "qwen2", "llama"])
def test_patching_every_input_of_a_layer_gives_its_corrupt_outputs(tiny_model_dir, arch):
    """Exactness of each receiver's location: a receiver reads the sum of its upstream nodes'
    outputs, so patching all of a layer's input edges (and nothing before) makes its heads and
    MLP output exactly what they output on the corrupt input, and patching the logits' edges
    gives the corrupt logits."""
    model = edge_model(tiny_model_dir, arch)
    g = model.graph
    batch = random_batch(seed=7)
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        corrupt_logits = model.run(batch.corrupt, record=corrupt)
    for layer in range(g.n_layers + 1):
        last = layer == g.n_layers
        cols = (slice(g.logits_receiver, g.logits_receiver + 1) if last
                else slice(g.qkv_receivers(layer, "q").start, g.mlp_receiver(layer) + 1))
        weights = torch.zeros(len(g.upstream), len(g.receivers), dtype=corrupt.dtype)
        weights[:, cols] = g.edge_mask[:, cols].to(weights.dtype)
        current = model.upstream_buffer(batch.clean)
        with torch.no_grad():
            logits = model.run(batch.clean, record=current, patch=(corrupt, weights))
        if last:
            torch.testing.assert_close(logits, corrupt_logits, rtol=0, atol=1e-8)
        else:
            nodes = slice(g.head(layer), g.mlp(layer) + 1)
            torch.testing.assert_close(current[nodes], corrupt[nodes], rtol=0, atol=1e-8)
            later = slice(g.mlp(layer) + 1, None)
            if layer < g.n_layers - 1:  # later layers still read the clean run's edges
                assert not torch.allclose(current[later], corrupt[later])


def test_faithfulness_is_the_same_when_batches_are_split_for_memory(tmp_path, tiny_model_dir, monkeypatch):
    """Out of memory on a whole batch: the stage retries on halves and must report the same."""
    directory = tiny_model_dir("gpt2")
    pairs = str(write_pairs(tmp_path / "pairs.parquet", seed=6, rows=5))
    edges = str(tmp_path / "edges.parquet")
    attribution.run_stage(
        eap_params(directory), pairs=pairs, edges=edges,
        top_edges=str(tmp_path / "top.parquet"), results_json=str(tmp_path / "r.json"),
    )
    params = faithfulness_params(directory, [0, 3, 10000])
    faithfulness.run_stage(params, pairs=pairs, edges=edges, out=tmp_path / "whole.parquet")

    run = faithfulness.EdgeModel.run
    rows_run = []

    def small_gpu(self, tokens, *args, **kwargs):
        rows_run.append(len(tokens))
        if len(tokens) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return run(self, tokens, *args, **kwargs)

    monkeypatch.setattr(faithfulness.EdgeModel, "run", small_gpu)
    faithfulness.run_stage(params, pairs=pairs, edges=edges, out=tmp_path / "split.parquet")
    assert max(rows_run) == 5 and set(rows_run[1:]) <= {1, 2}
    whole, split = (read_table(tmp_path / f"{name}.parquet") for name in ("whole", "split"))
    assert whole["faithfulness"].tolist() == pytest.approx(split["faithfulness"].tolist(), abs=1e-5)
