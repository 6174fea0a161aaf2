"""Circuit faithfulness by exact edge patching, on tiny random models; MIB's CPR and CMD."""

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.eap import attribution, faithfulness
from circuitflow.eap.batches import logit_diff
from circuitflow.eap.bridge import EdgeModel
from circuitflow.eap.faithfulness import (
    cpr_cmd, graph_edges, mib_sizes, patch_weights, patched_logit_diff, random_orders, ranked,
    summary_table,
)
from circuitflow.errors import CircuitflowError
from circuitflow.stage import Params
from circuitflow.tables import read_table
from test_eap_attribution import eap_outputs, eap_params, edge_model, random_batch, write_pairs


def faithfulness_params(directory, circuit_sizes, ranking="absolute", n_random=0, seed=0):
    return Params("faithfulness", {
        "model": {"source": "local", "path": str(directory), "name": "tiny"}, "device": "cpu",
        "faithfulness": {"circuit_sizes": circuit_sizes, "ranking": ranking,
                         "n_random": n_random, "seed": seed},
    })


def scored_edges(directory, tmp_path, seed=5, rows=3):
    """Pairs and the eap stage's edges.parquet for them: their paths."""
    pairs = str(write_pairs(tmp_path / "pairs.parquet", seed=seed, rows=rows))
    out = eap_outputs(tmp_path)
    attribution.run_stage(eap_params(directory), pairs=pairs, **{k: str(v) for k, v in out.items()})
    return pairs, str(out["edges"])


def run_faithfulness(params, pairs, edges, directory):
    """Run the stage into ``directory``: (faithfulness table, summary table)."""
    directory.mkdir(exist_ok=True)
    out, summary = directory / "faithfulness.parquet", directory / "summary.parquet"
    faithfulness.run_stage(params, pairs=pairs, edges=edges, out=str(out), summary=str(summary))
    return read_table(out), read_table(summary)


def float32_model(directory):
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    return EdgeModel(hf, AutoTokenizer.from_pretrained(directory))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo"])
def test_full_graph_scores_one_and_empty_graph_zero(tiny_model_dir, tmp_path, arch):
    directory = tiny_model_dir(arch)
    pairs, edges = scored_edges(directory, tmp_path)
    n_edges = read_table(edges)["upstream"].count() // 2
    params = faithfulness_params(directory, [0, 3, n_edges, n_edges + 10], n_random=1)
    table, summary = run_faithfulness(params, pairs, edges, tmp_path / "out")
    assert (table["n_edges_total"] == n_edges).all()
    configured = table[(table["circuit"] == "eap") & table["edge_percent"].isna()]
    assert configured["circuit_size"].tolist() == [0, 3, n_edges, n_edges + 10]
    assert configured["n_edges_in_circuit"].tolist() == [0, 3, n_edges, n_edges]
    assert configured["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert configured["faithfulness"].iloc[2:].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert configured["faithfulness"].iloc[1] != pytest.approx(0.0, abs=1e-3)
    # MIB's grid for EAP and the random draw: ⌊p · total⌋ edges; all of them score 1 whatever
    # their order, none 0.
    for circuit in ("eap", "random"):
        grid = table[(table["circuit"] == circuit) & table["edge_percent"].notna()]
        assert grid["edge_percent"].tolist() == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
        assert grid["n_edges_in_circuit"].tolist() == mib_sizes(n_edges)
        assert grid["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-5)
        empty = grid[grid["n_edges_in_circuit"] == 0]["faithfulness"]
        assert empty.tolist() == pytest.approx([0.0] * len(empty), abs=1e-5)
    assert set(table["ranking"].dropna()) == {"absolute"}
    assert table[table["circuit"] == "random"]["ranking"].isna().all()
    assert summary["circuit"].tolist() == ["eap", "random"]
    assert (summary["n_edges_total"] == n_edges).all()


def test_removing_one_edge_matches_a_hand_made_patch(tiny_model_dir):
    """Patching only input → logits: the final norm reads the clean residual stream minus
    (clean − corrupt embeddings), written here with a plain TransformerLens hook."""
    directory = tiny_model_dir("gpt2")
    model = float32_model(directory)
    g = model.graph
    batch = random_batch(seed=6)
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        model.run(batch.corrupt, batch.last, record=corrupt)
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
    rows = torch.arange(len(batch.last))
    expected = logit_diff(logits[rows, batch.last], batch)
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(patched, logit_diff(clean_logits[rows, batch.last], batch), atol=1e-3)


def test_ranking_by_absolute_or_signed_mean_score_and_foreign_edges(tiny_model_dir):
    directory = tiny_model_dir("gpt2")
    model = float32_model(directory)
    edges = pd.DataFrame({
        "batch": [0, 1, 0, 1, 0, 1],
        "upstream": ["input", "input", "l0.h1", "l0.h1", "l0.h0", "l0.h0"],
        "downstream": ["logits", "logits", "l0.mlp", "l0.mlp", "l1.h2.k", "l1.h2.k"],
        "score": [0.1, 0.3, -0.9, -0.1, 0.0, 0.1],  # means 0.2, -0.5, 0.05
    })
    up, down, mean = graph_edges(model, edges)
    names = [(model.graph.upstream[u], model.graph.receivers[d]) for u, d in zip(up, down)]
    assert dict(zip(names, mean)) == pytest.approx(
        {("input", "logits"): 0.2, ("l0.h1", "l0.mlp"): -0.5, ("l0.h0", "l1.h2.k"): 0.05}
    )
    by = {ranking: [names[i][0] for i in ranked(mean, ranking)] for ranking in ("absolute", "signed")}
    assert by == {"absolute": ["l0.h1", "input", "l0.h0"], "signed": ["input", "l0.h0", "l0.h1"]}
    with pytest.raises(CircuitflowError, match="not in this model's graph"):
        graph_edges(model, edges.assign(upstream="l7.h0"))
    with pytest.raises(CircuitflowError, match="does not have"):
        graph_edges(model, edges.assign(upstream="l1.h0", downstream="l0.mlp"))


def test_mib_sizes_are_the_floor_of_each_percentage():
    percentages = [Fraction(p, 1000) for p in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)]
    for n in (7, 110, 1234, 32491):
        assert mib_sizes(n) == [int(p * n) for p in percentages]


def test_cpr_and_cmd_of_known_curves():
    # f rises to 1 at half the edges: CPR = ½·½·(0 + 1) + ½·1 = 0.75, CMD = ½·½·(1 + 0) = 0.25.
    assert cpr_cmd([0, 0.5, 1], [0, 1, 1]) == pytest.approx((0.75, 0.25))
    # Overshooting 1 adds to CPR and to CMD alike:
    # CPR = 0.3·(0.2 + 1.5)/2 + 0.6·(1.5 + 1)/2 = 0.255 + 0.75; CMD = 0.3·(0.8 + 0.5)/2 + 0.6·0.5/2.
    assert cpr_cmd([0.1, 0.4, 1.0], [0.2, 1.5, 1.0]) == pytest.approx((1.005, 0.345))
    assert cpr_cmd([0.001, 1.0], [1.0, 1.0]) == pytest.approx((0.999, 0.0))


def test_summary_takes_the_mib_grid_and_the_spread_of_the_random_draws():
    def curve(circuit, draw, f, extra=()):
        grid = [{"edge_percent": 100 * x, "edge_fraction": x, "faithfulness": y}
                for x, y in zip([0.0, 0.5, 1.0], f)]
        configured = [{"edge_percent": np.nan, "edge_fraction": x, "faithfulness": y}
                      for x, y in extra]
        return [{"circuit": circuit, "ranking": "signed" if circuit == "eap" else None,
                 "draw": draw, "n_edges_total": 10, **row} for row in configured + grid]

    curves = pd.DataFrame(
        curve("eap", None, [0, 1, 1], extra=[(0.2, 5.0)])  # a configured size, not in the areas
        + curve("random", 0, [0, 0, 1]) + curve("random", 1, [0, 0.5, 1])
    ).astype({"draw": "Int64"})
    summary = summary_table(curves, seed=3, full_diff=2.0, corrupt_diff=0.5).set_index("circuit")
    assert summary.loc["eap", ["cpr", "cmd"]].tolist() == pytest.approx([0.75, 0.25])
    assert summary.loc["eap", "ranking"] == "signed" and summary.loc["eap", "n_curves"] == 1
    assert pd.isna(summary.loc["eap", "cpr_std"]) and pd.isna(summary.loc["eap", "seed"])
    # Draw 0: CPR 0.25, CMD 0.75; draw 1: CPR 0.125 + 0.375 = 0.5, CMD 0.5.
    random = summary.loc["random"]
    assert [random["cpr"], random["cmd"]] == pytest.approx([0.375, 0.625])
    assert [random["cpr_std"], random["cmd_std"]] == pytest.approx([np.std([0.25, 0.5], ddof=1)] * 2)
    assert random["n_curves"] == 2 and random["seed"] == 3
    assert summary["n_edges_total"].tolist() == [10, 10]
    assert summary["full_logit_diff"].tolist() == [2.0, 2.0]


def test_random_orders_are_seeded():
    first, again, other = (random_orders(50, 3, seed) for seed in (4, 4, 5))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert not np.array_equal(first[0], first[1])  # draws differ from one another
    assert all(sorted(order) == list(range(50)) for order in first)


def test_random_baseline_rows_follow_the_seed(tiny_model_dir, tmp_path):
    directory = tiny_model_dir("gpt2")
    pairs, edges = scored_edges(directory, tmp_path, seed=10)
    runs = {
        name: run_faithfulness(faithfulness_params(directory, [3], n_random=2, seed=seed),
                               pairs, edges, tmp_path / name)[0]
        for name, seed in (("first", 1), ("again", 1), ("other", 2))
    }
    random = {name: t[t["circuit"] == "random"].reset_index(drop=True) for name, t in runs.items()}
    assert random["first"]["draw"].unique().tolist() == [0, 1]
    pd.testing.assert_frame_equal(random["first"], random["again"])
    partial = random["first"]["n_edges_in_circuit"].between(1, random["first"]["n_edges_total"] - 1)
    assert not np.allclose(random["first"]["metric"][partial], random["other"]["metric"][partial])
    # The EAP circuits do not depend on the seed.
    eap = {name: t[t["circuit"] == "eap"].reset_index(drop=True) for name, t in runs.items()}
    pd.testing.assert_frame_equal(eap["first"], eap["other"])


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
        corrupt_logits = model.run(batch.corrupt, batch.last, record=corrupt)
    for layer in range(g.n_layers + 1):
        last = layer == g.n_layers
        cols = (slice(g.logits_receiver, g.logits_receiver + 1) if last
                else slice(g.qkv_receivers(layer, "q").start, g.mlp_receiver(layer) + 1))
        weights = torch.zeros(len(g.upstream), len(g.receivers), dtype=corrupt.dtype)
        weights[:, cols] = g.edge_mask[:, cols].to(weights.dtype)
        current = model.upstream_buffer(batch.clean)
        with torch.no_grad():
            logits = model.run(batch.clean, batch.last, record=current, patch=(corrupt, weights))
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
    pairs, edges = scored_edges(directory, tmp_path, seed=6, rows=5)
    params = faithfulness_params(directory, [0, 3, 10000])
    whole, _ = run_faithfulness(params, pairs, edges, tmp_path / "whole")

    run = faithfulness.EdgeModel.run
    rows_run = []

    def small_gpu(self, tokens, *args, **kwargs):
        rows_run.append(len(tokens))
        if len(tokens) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return run(self, tokens, *args, **kwargs)

    monkeypatch.setattr(faithfulness.EdgeModel, "run", small_gpu)
    split, _ = run_faithfulness(params, pairs, edges, tmp_path / "split")
    assert max(rows_run) == 5 and set(rows_run[1:]) <= {1, 2}
    assert whole["faithfulness"].tolist() == pytest.approx(split["faithfulness"].tolist(), abs=1e-5)
