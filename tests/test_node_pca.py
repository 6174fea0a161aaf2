"""Stage node-pca: PCA of every node's output at the class positions, checked against numpy's
SVD of outputs captured with plain torch hooks, one example at a time."""

import json
import shutil

import numpy as np
import pandas as pd
import plotly.io
import pytest
import torch
from threadpoolctl import threadpool_limits
from transformers import AutoModelForCausalLM

from circuitflow.errors import ConfigError
from circuitflow.node_pca import STAGE, pca_tags, run_stage
from circuitflow.node_pca_scores import cluster_verdict, pca_tag, score_node
from circuitflow.stage import Params
from circuitflow.tables import write_table

N_EXAMPLES = 72
CLASS_TOKENS = (300, 301, 302)  # the token at the class position decides the class
CLASS_ROLE = "cls"
EARLY = 1  # a position before every class token: nothing there can know the class
PCA = {
    "n_components": 6, "roles": ["class"], "offset": 0, "useful_positions": True,
    "max_nodes_plotted": 4, "cv_folds": 5, "seed": 0, "batch_size": 7, "tag_min_ari": 0.5,
}


@pytest.fixture(autouse=True)
def one_thread():
    """One BLAS/OpenMP thread for scikit-learn's k-means and numpy's SVD: on a shared machine
    a second one only waits (as torch's, see conftest.py)."""
    with threadpool_limits(limits=1):
        yield


def make_dataset(directory, with_classes=True):
    """clean.parquet and examples.parquet of random token sequences: the class token sits at a
    varying position 2..4; every seventh example is wrong, every eleventh has no class."""
    rng = np.random.default_rng(1)
    clean, labels = [], []
    for i in range(N_EXAMPLES):
        n_prompt, where, c = int(rng.integers(6, 10)), int(rng.integers(2, 5)), i % 3
        prompt = rng.integers(10, 290, n_prompt).tolist()
        prompt[where] = CLASS_TOKENS[c]
        roles = ["instruction"] * n_prompt + ["response"] * 3
        roles[where] = CLASS_ROLE
        clean.append({
            "example_id": i, "correct": i % 7 != 3, "prompt_token_ids": prompt,
            "answer_token_ids": rng.integers(10, 290, 3).tolist(), "token_roles": roles,
        })
        labelled = with_classes and i % 11 != 5
        labels.append({"example_id": i, "class": f"T{8 + c}" if labelled else None,
                       "class_role": CLASS_ROLE if labelled else None})
    write_table(pd.DataFrame(clean), directory / "clean.parquet")
    write_table(pd.DataFrame(labels), directory / "examples.parquet")
    useful = [{"position": EARLY, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:20"]}]
    (directory / "useful_nodes.json").write_text(json.dumps(useful))
    return pd.DataFrame(clean), pd.DataFrame(labels)


def run_pca(model_dir, data_dir, out_dir, **pca):
    values = {
        "model": {"source": "local", "path": str(model_dir), "name": "tiny"}, "device": "cpu",
        "dataset": "toy", "pca": {**PCA, **pca}, "plots": {"dpi": 40},
    }
    assert set(values) == {key.split(".")[0] for key in STAGE.reads} | set(STAGE.job)
    paths = {
        "summary": out_dir / "pca_nodes.parquet", "points": out_dir / "pca_points.parquet",
        "tags": out_dir / "pca_tags.json", "scatter": out_dir / "pca_scatter.png",
        "scatter_interactive": out_dir / "pca_scatter.plotly.json", "heatmap": out_dir / "pca_heatmap.png",
    }
    run_stage(
        Params(STAGE.name, values), clean=str(data_dir / "clean.parquet"),
        examples=str(data_dir / "examples.parquet"), useful=str(data_dir / "useful_nodes.json"),
        **{name: str(path) for name, path in paths.items()},
    )
    return pd.read_parquet(paths["summary"]), pd.read_parquet(paths["points"]), paths


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pca_data")
    make_dataset(directory)
    return directory


# --- the independent computation -----------------------------------------------------------

def hooked_outputs(model, tokens: list[int], position: int) -> dict[str, np.ndarray]:
    """Every head's z_h @ W_O[h] and every MLP's output at ``position``, one unpadded run."""
    if model.config.model_type == "gpt2":
        blocks = model.transformer.h
        projections = [b.attn.c_proj for b in blocks]
        w_o = [p.weight.detach() for p in projections]  # Conv1D: [in, out]
    else:
        blocks = model.model.layers
        projections = [b.self_attn.o_proj for b in blocks]
        w_o = [p.weight.detach().T for p in projections]  # Linear: [out, in]
    n_heads = model.config.num_attention_heads
    d_head = w_o[0].shape[0] // n_heads
    seen = {}
    handles = []
    for layer, (block, projection) in enumerate(zip(blocks, projections)):
        handles.append(projection.register_forward_pre_hook(
            lambda m, args, layer=layer: seen.__setitem__(("z", layer), args[0][0, position])))
        handles.append(block.mlp.register_forward_hook(
            lambda m, args, out, layer=layer: seen.__setitem__(("mlp", layer), out[0, position])))
    with torch.no_grad():
        model(torch.tensor([tokens]))
    for handle in handles:
        handle.remove()
    outputs = {}
    for layer in range(len(blocks)):
        z = seen["z", layer]
        for h in range(n_heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            outputs[f"l{layer}.h{h}"] = (z[rows] @ w_o[layer][rows]).double().numpy()
        outputs[f"l{layer}.mlp"] = seen["mlp", layer].double().numpy()
    return outputs


def numpy_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :k] * s[:k], (s**2 / (s**2).sum())[:k]


def copy_with(source, directory, change):
    """A copy of the model directory ``source`` whose model ``change(model)`` edited."""
    shutil.copytree(source, directory, dirs_exist_ok=True)  # the tokenizer
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        change(model)
    model.save_pretrained(directory)
    return directory


def random_biases(model):
    """Random biases (a fresh model's are zero): a head's output must leave the projection's
    bias out, which then matters."""
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("bias") and "ln" not in name:
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])  # learned positions, and rotary ones
def test_pca_equals_numpy_svd_of_hooked_outputs(arch, tiny_model_dir, data_dir, tmp_path):
    model_dir = copy_with(tiny_model_dir(arch), tmp_path / "model", random_biases)
    summary, points, _ = run_pca(model_dir, data_dir, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    clean, labels = pd.read_parquet(data_dir / "clean.parquet"), pd.read_parquet(
        data_dir / "examples.parquet")
    used = clean.merge(labels, on="example_id")
    used = used[used["correct"] & used["class"].notna()].sort_values("example_id")
    captured = {}  # site -> node -> [n, d_model]
    for row in used.itertuples():
        tokens = list(row.prompt_token_ids) + list(row.answer_token_ids)
        for site, position in (("class", list(row.token_roles).index(CLASS_ROLE)),
                               (f"p{EARLY}", EARLY)):
            for node, out in hooked_outputs(model, tokens, position).items():
                captured.setdefault(site, {}).setdefault(node, []).append(out)
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert len(summary) == 2 * n_layers * (n_heads + 1)
    for site, per_node in captured.items():
        for node, outputs in per_node.items():
            ref_coords, ref_evr = numpy_pca(np.stack(outputs), 6)
            row = summary[(summary["node"] == node) & (summary["site"] == site)].iloc[0]
            assert row["n_examples"] == len(used)
            np.testing.assert_allclose(
                [row[f"evr_{i}"] for i in range(6)], ref_evr, rtol=1e-4, atol=1e-7)
            mine = points[(points["node"] == node) & (points["site"] == site)]
            assert mine["example_id"].tolist() == used["example_id"].tolist()
            assert mine["class"].tolist() == used["class"].tolist()
            coords = mine[[f"pc{i}" for i in range(6)]].to_numpy()
            signs = np.sign((coords * ref_coords).sum(0))
            scale = np.abs(ref_coords).max()
            np.testing.assert_allclose(coords, ref_coords * signs, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def planted_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 with long embeddings for the class tokens: after layer norm, layer 0's
    MLP reads almost only the class token at its position."""
    def lengthen(model):
        model.transformer.wte.weight[list(CLASS_TOKENS)] *= 30

    return copy_with(tiny_model_dir("gpt2"), tmp_path_factory.mktemp("planted"), lengthen)


def test_planted_node_separates_and_nodes_blind_to_the_class_stay_near_chance(
    planted_model_dir, data_dir, tmp_path
):
    summary, points, paths = run_pca(planted_model_dir, data_dir, tmp_path)
    planted = summary[(summary["node"] == "l0.mlp") & (summary["site"] == "class")].iloc[0]
    assert planted["separation_accuracy"] >= 0.99
    assert planted["verdict"] == "3" and planted["tag"] == "PCA:3"
    blind = summary[summary["site"] == f"p{EARLY}"]
    chance = blind["chance_accuracy"].iloc[0]
    assert np.isclose(chance, 1 / 3, atol=0.03)
    assert (blind["separation_accuracy"] < chance + 0.2).all()
    assert blind["separation_accuracy"].mean() < chance + 0.1
    assert blind["tag"].isna().all()
    # The tags: the useful node's Fail% entry, and the planted node's PCA tag at its position.
    tags = json.loads(paths["tags"].read_text())
    assert {"position": EARLY, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:20"]} in tags
    assert {"position": int(planted["position"]), "layer": 0, "is_head": False, "num": 0,
            "tags": ["PCA:3"]} in tags
    page = plotly.io.read_json(paths["scatter_interactive"])
    assert page.data and all(trace.customdata is not None for trace in page.data)
    assert paths["scatter"].stat().st_size > 0 and paths["heatmap"].stat().st_size > 0


def test_a_dataset_without_classes_is_an_error(tiny_model_dir, tmp_path):
    make_dataset(tmp_path, with_classes=False)
    with pytest.raises(ConfigError, match="dataset 'toy' has no class labels"):
        run_pca(tiny_model_dir("gpt2"), tmp_path, tmp_path)


# --- scores and verdict on synthetic data ----------------------------------------------------

def _blobs(centres, n=60, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.standard_normal((n, len(c))) for c in centres])


TRICASE = np.repeat(["T8", "T9", "T10"], 60)
AXES = np.eye(6)


def test_planted_and_random_outputs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    classes = np.array(["a", "b", "c"])[labels]
    outputs = rng.standard_normal((300, 32)) + 4 * np.eye(32)[labels]
    planted = score_node(outputs, classes, 6, 5, 0)
    assert planted.separation_accuracy >= 0.99
    again = score_node(outputs, classes, 6, 5, 0)  # fixed seeds: the same scores
    assert (again.coords == planted.coords).all()
    assert again.separation_accuracy == planted.separation_accuracy
    assert again.clusters == planted.clusters
    random = score_node(rng.standard_normal((300, 32)), classes, 6, 5, 0)
    assert abs(random.separation_accuracy - random.chance_accuracy) < 0.1
    assert random.chance_accuracy == np.bincount(labels).max() / 300


@pytest.mark.parametrize("centres, verdict, tag", [
    ([10 * AXES[0], 10 * AXES[1], 0 * AXES[0]], "3", "PCA:3"),  # three separate clusters
    ([10 * AXES[0], 0 * AXES[0], 0 * AXES[0]], "2", "PCA:2"),  # T9 and T10 share one
    # Two clusters to the eye, but the shared one holds its two classes side by side: the
    # 3-way partition agrees better with the classes while silhouette and CH prefer 2.
    ([12 * AXES[0], -1.5 * AXES[1], 1.5 * AXES[1]], "inconclusive", None),
])
def test_cluster_verdict(centres, verdict, tag):
    clusters = cluster_verdict(_blobs(centres), TRICASE, seed=0)
    assert clusters.verdict == verdict
    assert pca_tag(clusters, 0.5) == tag


def test_noise_gets_no_tag_whatever_its_verdict():
    clusters = cluster_verdict(np.random.default_rng(0).standard_normal((180, 6)), TRICASE, 0)
    assert max(clusters.adjusted_rand.values()) < 0.05
    assert pca_tag(clusters, 0.5) is None


def test_tags_join_fail_and_pca_tags_of_one_node():
    useful = [{"position": 4, "layer": 1, "is_head": False, "num": 0, "tags": ["Fail%:30"]},
              {"position": 2, "layer": 0, "is_head": True, "num": 3, "tags": ["Fail%:12"]}]
    summary = pd.DataFrame({
        "node": ["l1.mlp", "l0.h1", "l0.h2"], "position": [4, 4, 4],
        "tag": ["PCA:2", "PCA:3", None],
    })
    assert pca_tags(summary, useful) == [
        {"position": 2, "layer": 0, "is_head": True, "num": 3, "tags": ["Fail%:12"]},
        {"position": 4, "layer": 0, "is_head": True, "num": 1, "tags": ["PCA:3"]},
        {"position": 4, "layer": 1, "is_head": False, "num": 0, "tags": ["Fail%:30", "PCA:2"]},
    ]


def test_outputs_that_do_not_vary_are_inconclusive():
    classes = np.repeat(["a", "b"], 20)
    outputs = np.ones((40, 16)) + 1e-9 * np.random.default_rng(0).standard_normal((40, 16))
    scores = score_node(outputs, classes, 6, 5, 0)
    assert (scores.explained_variance_ratio == 0).all() and (scores.coords == 0).all()
    assert scores.separation_accuracy <= scores.chance_accuracy
    assert np.isnan(scores.class_silhouette)
    assert scores.clusters.verdict == "inconclusive"


def test_no_correct_example_leaves_empty_tables_and_the_useful_nodes(tmp_path):
    clean, _ = make_dataset(tmp_path)
    write_table(clean.assign(correct=False), tmp_path / "clean.parquet")
    summary, points, paths = run_pca(tmp_path / "no_model", tmp_path, tmp_path)
    assert summary.empty and points.empty
    assert "evr_5" in summary.columns and "pc5" in points.columns
    assert json.loads(paths["tags"].read_text()) == json.loads(
        (tmp_path / "useful_nodes.json").read_text())
    assert paths["scatter"].exists() and paths["heatmap"].exists()
