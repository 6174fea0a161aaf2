"""EAP and EAP-IG on tiny random models of every supported architecture.

The reference for every score is a finite difference computed by exact edge patching
(``EdgeModel.run(patch=...)``), code that shares nothing with the gradient path: nudging edge
u → r by ±ε towards its corrupt value moves the metric by ∓ε · score(u → r).
Models run in float64 so the finite differences are accurate; a few operations (GPT-Neo's
attention, RMSNorm) compute in float32 inside transformers, hence the tolerance.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.eap.attribution import attribute, conditioning, run_stage, top_edge_table
from circuitflow.eap.batches import PairBatch, logit_diff
from circuitflow.eap.bridge import EdgeModel
from circuitflow.eap.graph import Graph
from circuitflow.stage import Params
from circuitflow.tables import read_table, write_table
from conftest import ARCHITECTURES

EPS = 1e-3


def edge_model(tiny_model_dir, arch, use_split_hooks=True):
    directory = tiny_model_dir(arch)
    hf = AutoModelForCausalLM.from_pretrained(directory).double().eval()
    # Fresh models have zero biases and unit norm weights: perturb them so that code ignoring
    # a bias or a norm weight cannot pass.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return EdgeModel(hf, AutoTokenizer.from_pretrained(directory), use_split_hooks=use_split_hooks)


def random_batch(seed=0, lengths=(6, 4, 5), vocab=300, pad_id=0):
    """Clean/corrupt rows of different lengths, right-padded, as ``pair_batches`` makes them."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)

    def ids():
        rows = torch.randint(1, vocab, (len(lengths), width), generator=g)
        for row, n in zip(rows, lengths):
            row[n:] = pad_id
        return rows

    return PairBatch(
        clean=ids(), corrupt=ids(), last=torch.tensor(lengths) - 1,
        clean_answer=torch.randint(1, vocab, (len(lengths),), generator=g),
        corrupt_answer=torch.randint(1, vocab, (len(lengths),), generator=g),
    )


def nudged_metric(model, batch, corrupt, edge, eps):
    weights = torch.zeros(model.graph.edge_mask.shape, dtype=corrupt.dtype)
    weights[edge] = eps
    with torch.no_grad():
        current = model.upstream_buffer(batch.clean)
        logits = model.run(batch.clean, batch.last, record=current, patch=(corrupt, weights))
    return logit_diff(logits, batch).mean().item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_run_gives_the_hugging_face_logits_at_each_rows_last_position(tiny_model_dir, arch):
    model = edge_model(tiny_model_dir, arch)
    batch = random_batch(seed=8)
    with torch.no_grad():
        final = model.run(batch.clean, batch.last)
        full = model.bridge.original_model(batch.clean).logits
    at_last = full[torch.arange(len(batch.last)), batch.last]
    torch.testing.assert_close(final, at_last, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_score_is_the_finite_difference_of_patching_its_edge(tiny_model_dir, arch):
    model = edge_model(tiny_model_dir, arch)
    batch = random_batch()
    scores, _, corrupt_diff, _ = attribute(model, batch)
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        corrupt_logits = model.run(batch.corrupt, batch.last, record=corrupt)
    assert logit_diff(corrupt_logits, batch).mean().item() == pytest.approx(corrupt_diff)
    up, down = model.graph.edges
    fd = torch.tensor([
        (nudged_metric(model, batch, corrupt, e, -EPS) - nudged_metric(model, batch, corrupt, e, EPS))
        / (2 * EPS)
        for e in zip(up.tolist(), down.tolist())
    ], dtype=scores.dtype)
    assert scores[up, down].abs().max() > 1e-2  # the random model is not trivially flat
    torch.testing.assert_close(scores[up, down], fd, rtol=0, atol=2e-3 * fd.abs().max().item())
    assert (scores[~model.graph.edge_mask] == 0).all()


def test_ig_with_one_step_is_eap_and_more_steps_differ(tiny_model_dir):
    model = edge_model(tiny_model_dir, "gpt2")
    batch = random_batch(seed=1)
    eap, clean, corrupt, says_clean = attribute(model, batch)
    assert torch.equal(attribute(model, batch, ig_steps=1)[0], eap)
    ig, ig_clean, ig_corrupt, ig_says_clean = attribute(model, batch, ig_steps=4)
    assert (ig_clean, ig_corrupt, ig_says_clean) == (clean, corrupt, says_clean)
    assert not torch.allclose(ig, eap)


def test_ig_averages_gradients_along_the_input_path(tiny_model_dir):
    """EAP-IG's score of an edge from the input is the mean over k of Δ · ∂metric/∂r at
    α_k = k/steps, the run's embeddings being corrupt + α_k · Δ. In that run the input node's own
    difference from the corrupt run is α_k · Δ, so patching its edge with weight w moves the
    metric by −w · α_k · (Δ · ∂metric/∂r): a finite difference at each α_k gives the reference."""
    model = edge_model(tiny_model_dir, "gpt2")
    batch = random_batch(seed=2)
    steps = 2
    ig = attribute(model, batch, ig_steps=steps)[0]
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        model.run(batch.corrupt, batch.last, record=corrupt)
    g = model.graph

    def metric(alpha, receiver, w):
        weights = torch.zeros(len(g.upstream), len(g.receivers), dtype=corrupt.dtype)
        weights[0, receiver] = w
        with torch.no_grad():
            current = model.upstream_buffer(batch.clean)
            logits = model.run(
                batch.clean, batch.last, record=current, patch=(corrupt, weights),
                input_fn=lambda x: corrupt[0] + alpha * (x - corrupt[0]),
            )
        return logit_diff(logits, batch).mean().item()

    reference = []
    for receiver in range(len(g.receivers)):
        total = 0.0
        for k in range(1, steps + 1):
            alpha = k / steps
            slope = (metric(alpha, receiver, EPS) - metric(alpha, receiver, -EPS)) / (2 * EPS)
            total += -slope / alpha
        reference.append(total / steps)
    reference = torch.tensor(reference, dtype=ig.dtype)
    torch.testing.assert_close(ig[0], reference, rtol=0, atol=2e-3 * reference.abs().max().item())
    assert not torch.allclose(ig[0], attribute(model, batch)[0][0], rtol=1e-2)


def test_emulated_heads_match_split_hooks(tiny_model_dir):
    """The per-head derivation used for GPT-Neo, run on models where TransformerLens splits heads
    itself, gives the same upstream outputs, patched runs and scores."""
    for arch in ("gpt2", "qwen2"):
        split = edge_model(tiny_model_dir, arch)
        derived = edge_model(tiny_model_dir, arch, use_split_hooks=False)
        assert split.emulated is None and derived.emulated is not None
        batch = random_batch(seed=3)
        records = []
        for model in (split, derived):
            corrupt = model.upstream_buffer(batch.corrupt)
            with torch.no_grad():
                model.run(batch.corrupt, batch.last, record=corrupt)
            records.append(corrupt)
        torch.testing.assert_close(records[0], records[1], rtol=0, atol=1e-10)
        weights = torch.rand(split.graph.edge_mask.shape, dtype=torch.float64)
        weights *= split.graph.edge_mask
        patched = []
        for model in (split, derived):
            with torch.no_grad():
                current = model.upstream_buffer(batch.clean)
                patched.append(
                    model.run(batch.clean, batch.last, record=current, patch=(records[0], weights))
                )
        torch.testing.assert_close(patched[0], patched[1], rtol=0, atol=1e-6)
        scores = [attribute(model, batch)[0] for model in (split, derived)]
        torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=1e-6)


def test_gpt_neo_per_head_outputs_add_up_to_the_attention_output(tiny_model_dir):
    model = edge_model(tiny_model_dir, "gpt_neo")
    assert model.emulated is not None  # TransformerLens 4.3 cannot split GPT-Neo's heads
    batch = random_batch(seed=4)
    record = model.upstream_buffer(batch.clean)
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.clean)
        model.run(batch.clean, batch.last, record=record)
    g = model.graph
    for layer in range(g.n_layers):
        heads = record[g.head(layer):g.head(layer) + g.n_heads].sum(0)
        b_o = model.bridge.blocks[layer].attn.b_O
        attn_out = cache[f"blocks.{layer}.hook_attn_out"]
        torch.testing.assert_close(heads + b_o, attn_out, rtol=0, atol=1e-10)


def test_graph_edges():
    g = Graph(n_layers=2, n_heads=2, n_kv_heads=1)
    assert g.upstream == ["input", "l0.h0", "l0.h1", "l0.mlp", "l1.h0", "l1.h1", "l1.mlp"]
    assert g.receivers[:6] == ["l0.h0.q", "l0.h1.q", "l0.kv0.k", "l0.kv0.v", "l0.mlp", "l1.h0.q"]
    edges = set(zip(*g.edge_names()))
    assert ("l0.h1", "l0.mlp") in edges and ("input", "logits") in edges
    assert ("l0.h1", "l0.h0.q") not in edges and ("l0.mlp", "l0.mlp") not in edges
    assert ("l1.h0", "l1.mlp") in edges and ("l1.mlp", "l1.h0.q") not in edges
    # input: 11 receivers; layer-0 heads: 7 each; layer-0 MLP: 6; layer-1 heads: 2 each; MLP: 1.
    assert len(edges) == 11 + 2 * 7 + 6 + 2 * 2 + 1
    assert Graph(2, 4, 4).receivers[4:6] == ["l0.h0.k", "l0.h1.k"]


def test_top_edge_table_keeps_top_n_and_edges_in_every_batch_top():
    scores = np.array([[10.0, 0.0, -3.0, 0.1], [0.0, 10.0, -3.0, 0.2]])
    table = top_edge_table(["a", "b", "e", "d"], ["x"] * 4, scores, top_n=2)
    assert table["upstream"].tolist() == ["a", "b", "e"]  # e is in neither mean top 2
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["score"].tolist() == pytest.approx([5.0, 5.0, -3.0])
    assert table["n_batches_in_top"].tolist() == [1, 1, 2]
    assert table["in_top_every_batch"].tolist() == [False, False, True]


def write_pairs(path, seed=0, batches=2, rows=3, vocab=300):
    g = np.random.default_rng(seed)
    records = []
    for batch in range(batches):
        for i in range(rows):
            n = int(g.integers(4, 8))
            records.append({
                "pair_id": batch * rows + i, "clean_prompt": "", "corrupt_prompt": "",
                "clean_token_ids": g.integers(1, vocab, n).tolist(),
                "corrupt_token_ids": g.integers(1, vocab, n).tolist(),
                "clean_answer_id": int(g.integers(1, vocab)),
                "corrupt_answer_id": int(g.integers(1, vocab)),
                "batch": batch,
            })
    write_table(pd.DataFrame(records), path)
    return path


def eap_params(directory, method="eap", top_n=5, min_logit_diff=0.0):
    """The params the workflow gives the eap stage: ``ig_steps`` only under eap-ig."""
    eap = {"method": method, "top_n": top_n, "min_logit_diff": min_logit_diff,
           **({"ig_steps": 3} if method == "eap-ig" else {})}
    return Params("eap", {
        "model": {"source": "local", "path": str(directory), "name": "tiny"}, "device": "cpu",
        "dataset": "cs1", "feature": "ENGTABLENAME", "eap": eap,
    })


def eap_outputs(directory):
    """The eap stage's output paths in ``directory``, by output name."""
    return {name: directory / file for name, file in (
        ("edges", "edges.parquet"), ("top_edges", "top_edges.parquet"),
        ("results_json", "eap_results.json"), ("graph_json", "graph.json"),
    )}


def test_run_stage_outputs(tiny_model_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.parquet")
    out = eap_outputs(tmp_path)
    paths = {name: str(path) for name, path in out.items()}
    run_stage(eap_params(tiny_model_dir("gpt2")), pairs=str(pairs), **paths)
    edges = read_table(out["edges"], ["batch", "upstream", "downstream", "score"])
    g = Graph(2, 4, 4)
    assert len(edges) == 2 * len(g.edges[0]) and sorted(edges["batch"].unique()) == [0, 1]
    top = read_table(out["top_edges"], ["upstream", "downstream", "score", "n_batches_in_top",
                                        "in_top_every_batch", "ill_conditioned"])
    mean = edges.groupby(["upstream", "downstream"])["score"].mean()
    expected = [mean[(u, d)] for u, d in zip(top["upstream"], top["downstream"])]
    assert top["score"].tolist() == pytest.approx(expected)
    assert top["score"].abs().is_monotonic_decreasing and len(top) >= 5
    assert top["score"].abs().iloc[0] == pytest.approx(mean.abs().max())
    results = json.loads(out["results_json"].read_text())
    assert results["metadata"]["n_layers"] == 2 and results["metadata"]["n_batches"] == 2
    assert results["metadata"]["dataset"] == "cs1" and "commandset" not in results["metadata"]
    assert results["metadata"]["feature_name"] == "ENGTABLENAME"
    assert results["metadata"]["method"] == "eap" and results["metadata"]["ig_steps"] is None
    params = results["parameters"]
    assert params["clean_metric"] == pytest.approx(1.0)
    assert params["corrupt_metric"] == pytest.approx(0.0)
    assert [e["from_edge"] for e in results["edges"]] == top["upstream"].tolist()
    assert {"from_edge", "to_edge", "score"} == set(results["edges"][0])
    diagnostics = results["diagnostics"]
    assert diagnostics["ill_conditioned"] is (diagnostics["reason"] is not None)
    assert (top["ill_conditioned"] == diagnostics["ill_conditioned"]).all()


def test_run_stage_under_eap_ig_reads_ig_steps(tiny_model_dir, tmp_path):
    pairs = str(write_pairs(tmp_path / "pairs.parquet"))
    outputs = {"edges": "edges.parquet", "top_edges": "top.parquet", "results_json": "r.json",
               "graph_json": "graph.json"}
    for method in ("eap", "eap-ig"):
        (tmp_path / method).mkdir()
        paths = {name: str(tmp_path / method / file) for name, file in outputs.items()}
        run_stage(eap_params(tiny_model_dir("gpt2"), method=method), pairs=pairs, **paths)
    metadata = json.loads((tmp_path / "eap-ig" / "r.json").read_text())["metadata"]
    assert metadata["method"] == "eap-ig" and metadata["ig_steps"] == 3
    eap, ig = (read_table(tmp_path / m / "edges.parquet")["score"] for m in ("eap", "eap-ig"))
    assert not np.allclose(eap, ig)


def test_a_batch_split_for_memory_scores_as_the_whole(tiny_model_dir):
    from circuitflow.batching import Batches
    from circuitflow.eap.attribution import attribute_in_parts

    model = edge_model(tiny_model_dir, "gpt2")
    batch = random_batch(seed=3, lengths=(6, 4, 5, 6, 3))
    whole = attribute(model, batch, ig_steps=2)
    parts = Batches(2)  # as if the GPU held only two rows: slices of 2, 2 and 1
    split = attribute_in_parts(model, batch, 2, parts)
    assert torch.allclose(split.scores, whole.scores, atol=1e-10)
    assert split[1:] == pytest.approx(whole[1:])


def test_conditioning_flags_a_small_gap_or_a_corruption_that_keeps_the_answer():
    fine = conditioning(3.0, 1.5, corrupt_says_clean=0.5, min_logit_diff=1.0)
    assert fine["ill_conditioned"] is False and fine["reason"] is None
    assert fine["logit_diff_gap"] == 1.5
    close = conditioning(27.83, 27.80, corrupt_says_clean=0.0, min_logit_diff=1.0)
    assert close["ill_conditioned"] and "min_logit_diff" in close["reason"]
    assert close["logit_diff_gap"] == pytest.approx(0.03)
    # The gap's sign does not matter, only its size.
    assert conditioning(1.0, 1.9, 0.0, 1.0)["ill_conditioned"]
    assert not conditioning(1.0, 2.1, 0.0, 1.0)["ill_conditioned"]
    kept = conditioning(5.0, 0.0, corrupt_says_clean=0.6, min_logit_diff=1.0)
    assert kept["ill_conditioned"] and "60% of the corrupt prompts" in kept["reason"]
    assert "min_logit_diff" not in kept["reason"]


def corrupt_top_tokens(directory, pairs_path):
    """Each pair's top next token on its corrupt prompt, from the Hugging Face model itself."""
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    pairs = read_table(pairs_path)
    with torch.no_grad():
        return [int(hf(torch.tensor([list(ids)])).logits[0, -1].argmax())
                for ids in pairs["corrupt_token_ids"]]


def plant_answers(pairs_path, top, answered_clean):
    """Make the first ``answered_clean`` pairs' clean answer the corrupt prompt's top token and
    every other pair's clean answer a different one."""
    pairs = read_table(pairs_path)
    clean = [t if i < answered_clean else (t + 1) % 300 for i, t in enumerate(top)]
    pairs["clean_answer_id"] = clean
    pairs["corrupt_answer_id"] = [(c + 7) % 300 for c in clean]
    write_table(pairs, pairs_path)


def test_stage_marks_planted_ill_conditioned_pairs(tiny_model_dir, tmp_path):
    directory = tiny_model_dir("gpt2")
    pairs = write_pairs(tmp_path / "pairs.parquet", seed=8)  # 6 pairs
    top = corrupt_top_tokens(directory, pairs)

    plant_answers(pairs, top, answered_clean=4)
    out = eap_outputs(tmp_path / "kept")
    run_stage(eap_params(directory), pairs=str(pairs), **{k: str(v) for k, v in out.items()})
    diagnostics = json.loads(out["results_json"].read_text())["diagnostics"]
    assert diagnostics["corrupt_answered_clean_share"] == pytest.approx(4 / 6)
    assert diagnostics["ill_conditioned"] and "67% of the corrupt prompts" in diagnostics["reason"]
    assert read_table(out["top_edges"])["ill_conditioned"].all()

    plant_answers(pairs, top, answered_clean=2)
    # The gap, computed here on the Hugging Face model: per batch, the mean over its pairs.
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    table = read_table(pairs)
    with torch.no_grad():
        def diff(ids, row):
            logits = hf(torch.tensor([list(ids)])).logits[0, -1]
            return float(logits[row.clean_answer_id] - logits[row.corrupt_answer_id])
        table["gap"] = [diff(r.clean_token_ids, r) - diff(r.corrupt_token_ids, r)
                        for r in table.itertuples()]
    gap = table.groupby("batch")["gap"].mean().mean()
    for threshold, flagged in ((abs(gap) * 1.01, True), (abs(gap) * 0.99, False)):
        out = eap_outputs(tmp_path / str(flagged))
        run_stage(eap_params(directory, min_logit_diff=threshold), pairs=str(pairs),
                  **{k: str(v) for k, v in out.items()})
        diagnostics = json.loads(out["results_json"].read_text())["diagnostics"]
        assert diagnostics["logit_diff_gap"] == pytest.approx(gap, rel=1e-4)
        assert diagnostics["corrupt_answered_clean_share"] == pytest.approx(2 / 6)
        assert diagnostics["ill_conditioned"] is flagged
        assert (read_table(out["top_edges"])["ill_conditioned"] == flagged).all()


def eap_ig_names(upstream, downstream, n_heads, n_kv_heads):
    """EAP-IG's edge names of one circuitflow edge, converted by hand for this test: a grouped
    key/value receiver stands for each query head of its group."""
    parent = re.sub(r"^l(\d+)\.h(\d+)$", r"a\1.h\2", upstream)
    parent = re.sub(r"^l(\d+)\.mlp$", r"m\1", parent)
    if m := re.fullmatch(r"l(\d+)\.h(\d+)\.([qkv])", downstream):
        return [f"{parent}->a{m[1]}.h{m[2]}<{m[3]}>"]
    if m := re.fullmatch(r"l(\d+)\.kv(\d+)\.([kv])", downstream):
        per_group = n_heads // n_kv_heads
        heads = range(int(m[2]) * per_group, (int(m[2]) + 1) * per_group)
        return [f"{parent}->a{m[1]}.h{h}<{m[3]}>" for h in heads]
    child = re.sub(r"^l(\d+)\.mlp$", r"m\1", downstream)
    return [f"{parent}->{child}"]


def eap_ig_edge_set(n_layers, n_heads):
    """Every edge of EAP-IG's graph of a sequential model, built as its ``Graph.from_model``
    does: a layer's heads read everything before the layer, its MLP also the layer's heads."""
    residual, names = ["input"], set()
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        names |= {f"{u}->{h}<{x}>" for u in residual for h in heads for x in "qkv"}
        residual += heads
        names |= {f"{u}->m{layer}" for u in residual}
        residual.append(f"m{layer}")
    return names | {f"{u}->logits" for u in residual}


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])  # qwen2's tiny model has 2 key/value heads
def test_graph_json_reads_back_as_the_edge_table(tiny_model_dir, tmp_path, arch):
    directory = tiny_model_dir(arch)
    hf_config = AutoModelForCausalLM.from_pretrained(directory).config
    n_layers, n_heads = hf_config.num_hidden_layers, hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    pairs = write_pairs(tmp_path / "pairs.parquet", seed=9)
    out = eap_outputs(tmp_path)
    run_stage(eap_params(directory, top_n=5), pairs=str(pairs), **{k: str(v) for k, v in out.items()})
    graph = json.loads(out["graph_json"].read_text())

    assert graph["cfg"] == {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": False,
                            "d_model": hf_config.hidden_size}
    mean = read_table(out["edges"]).groupby(["upstream", "downstream"])["score"].mean()
    top5 = set(mean.abs().sort_values(ascending=False).index[:5])
    expected = {}
    for (up, down), score in mean.items():
        names = eap_ig_names(up, down, n_heads, n_kv)
        for name in names:
            expected[name] = (score / len(names), (up, down) in top5)
    assert set(graph["edges"]) == set(expected) == eap_ig_edge_set(n_layers, n_heads)
    for name, edge in graph["edges"].items():
        assert edge["score"] == pytest.approx(expected[name][0], rel=1e-12, abs=0)
        assert edge["in_graph"] is expected[name][1]

    heads = [f"a{layer}.h{h}" for layer in range(n_layers) for h in range(n_heads)]
    mlps = [f"m{layer}" for layer in range(n_layers)]
    assert set(graph["nodes"]) == {"input", "logits", *heads, *mlps}
    chosen = [name for name, (_, in_graph) in expected.items() if in_graph]
    parents = {name.split("->")[0] for name in chosen}
    children = {re.sub(r"<.>$", "", name.split("->")[1]) for name in chosen} | {"input"}
    for name, node in graph["nodes"].items():
        assert node == {"in_graph": name == "logits" or (name in parents and name in children)}
