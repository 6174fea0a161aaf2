"""Greedy pruning against an independent sequential reference: one plain forward pass per
candidate and per pair, unpadded, with torch hooks on the Hugging Face modules."""

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.ablation.layout import layout_of
from circuitflow.eap.batches import pair_batches
from circuitflow.errors import ConfigError
from circuitflow.pruning import greedy
from circuitflow.pruning.intervention import CircuitRunner, prunable_nodes
from circuitflow.pruning.positions import keep_positions
from circuitflow.pruning.search import greedy_prune, visiting_order
from circuitflow.stage import Params
from circuitflow.tables import read_table, write_table

N_LAYERS, N_HEADS, D_MODEL = 3, 4, 64
D_HEAD = D_MODEL // N_HEADS
# Written out here rather than taken from circuitflow's layout table.
HEAD_INPUT = {
    "gpt2": "transformer.h.{}.attn.c_proj",
    "gpt_neo": "transformer.h.{}.attn.attention.out_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
}
MLP = {"gpt2": "transformer.h.{}.mlp", "gpt_neo": "transformer.h.{}.mlp", "llama": "model.layers.{}.mlp"}
FIELD = "field"  # a token role some positions carry


# -- the reference --------------------------------------------------------------------------

def node_list(include_mlps):
    names = []
    for layer in range(N_LAYERS):
        names += [f"l{layer}.h{h}" for h in range(N_HEADS)] + ([f"l{layer}.mlp"] if include_mlps else [])
    return names


def kept_positions(roles_by_node, node, row):
    """Positions where ``node`` keeps its output in pair ``row`` (a dict row)."""
    length = len(row["clean_token_ids"])
    positions = set()
    for role in roles_by_node.get(node, roles_by_node.get("default", ["all"])):
        if role == "all":
            positions |= set(range(length))
        elif role == "end":
            positions.add(length - 1)
        else:
            positions |= {t for t, r in enumerate(row["token_roles"]) if r == role}
    return positions


def reference_means(model, arch, rows, reference):
    """Per layer: z [positions, heads, d_head] and MLP output [positions, d] averaged per
    position over the reference prompts, each run alone."""
    width = max(len(r["clean_token_ids"]) for r in rows)
    z_sum = torch.zeros(N_LAYERS, width, D_MODEL)
    mlp_sum = torch.zeros(N_LAYERS, width, D_MODEL)
    count = torch.zeros(width)
    if reference == "zero":
        return z_sum.view(N_LAYERS, width, N_HEADS, D_HEAD), mlp_sum
    handles = []
    for layer in range(N_LAYERS):
        def take_z(module, args, layer=layer):
            z_sum[layer, : args[0].shape[1]] += args[0][0]

        def take_mlp(module, args, out, layer=layer):
            mlp_sum[layer, : out.shape[1]] += out[0]

        handles.append(model.get_submodule(HEAD_INPUT[arch].format(layer)).register_forward_pre_hook(take_z))
        handles.append(model.get_submodule(MLP[arch].format(layer)).register_forward_hook(take_mlp))
    with torch.no_grad():
        for r in rows:
            ids = r[f"{reference}_token_ids"]
            model(torch.tensor([ids]))
            count[: len(ids)] += 1
    for h in handles:
        h.remove()
    count = count.clamp(min=1)
    return (z_sum / count[:, None]).view(N_LAYERS, width, N_HEADS, D_HEAD), mlp_sum / count[:, None]


def reference_metric(model, arch, rows, circuit, prunable, roles_by_node, means):
    """Mean logit difference with every prunable node outside ``circuit`` mean-ablated, and
    those inside ablated outside their kept positions."""
    z_mean, mlp_mean = means
    diffs = []
    for row in rows:
        handles = []
        for layer in range(N_LAYERS):
            def heads(module, args, layer=layer, row=row):
                z = args[0].clone().view(1, -1, N_HEADS, D_HEAD)
                for h in range(N_HEADS):
                    name = f"l{layer}.h{h}"
                    keep = kept_positions(roles_by_node, name, row) if name in circuit else set()
                    for t in range(z.shape[1]):
                        if t not in keep:
                            z[0, t, h] = z_mean[layer, t, h]
                return (z.view(args[0].shape),)

            handles.append(model.get_submodule(HEAD_INPUT[arch].format(layer)).register_forward_pre_hook(heads))
            name = f"l{layer}.mlp"
            if name in prunable:
                def mlp(module, args, out, layer=layer, row=row, name=name):
                    out = out.clone()
                    keep = kept_positions(roles_by_node, name, row) if name in circuit else set()
                    for t in range(out.shape[1]):
                        if t not in keep:
                            out[0, t] = mlp_mean[layer, t]
                    return out

                handles.append(model.get_submodule(MLP[arch].format(layer)).register_forward_hook(mlp))
        with torch.no_grad():
            logits = model(torch.tensor([row["clean_token_ids"]])).logits[0, -1]
        for h in handles:
            h.remove()
        diffs.append(float(logits[row["clean_answer_id"]] - logits[row["corrupt_answer_id"]]))
    return float(np.mean(diffs))


def reference_prune(model, arch, pairs, threshold, roles_by_node=None, order="last_layer_first",
                    include_mlps=False, reference="corrupt"):
    """(node, score without it, removed) per step, the notebook's loop."""
    roles_by_node = roles_by_node or {}
    rows = pairs.sort_values("pair_id").to_dict("records")
    means = reference_means(model, arch, rows, reference)
    full = reference_metric(model, arch, rows, set(node_list(True)), set(), {}, means)
    names = node_list(include_mlps)
    layer = {n: int(n.split(".")[0][1:]) for n in names}
    visit = sorted(names, key=lambda n: ((-1 if order == "last_layer_first" else 1) * layer[n], names.index(n)))
    circuit, steps = set(names), []
    for name in visit:
        trial = circuit - {name}
        score = 100 * reference_metric(model, arch, rows, trial, set(names), roles_by_node, means) / full
        removed = 100 - score < threshold
        steps.append((name, score, removed))
        if removed:
            circuit = trial
    return steps


# -- models and pairs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> a saved 3-layer tiny model directory (cached)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = make_tiny_model(arch, tmp_path_factory.mktemp(arch), n_layers=N_LAYERS)
        return cache[arch]

    return get


def load(directory, std=0.15):
    """The saved model with its matrices redrawn larger: at the default initialisation a tiny
    model's heads barely move its logits, and every head would be dropped."""
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def make_pairs(model, n=6, seed=0, answers=None):
    """Random prompts of 7-10 tokens; the corrupt one differs in one token. Answers: the clean
    prompt's top token, and the corrupt prompt's (its second if the same), unless ``answers``
    (clean ids -> (a, b)) chooses them."""
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    rows = []
    for i in range(n):
        clean = rng.integers(1, vocab, size=int(rng.integers(7, 11))).tolist()
        corrupt = list(clean)
        swap = int(rng.integers(1, len(clean) - 1))
        corrupt[swap] = (clean[swap] + 1 + int(rng.integers(vocab - 2))) % (vocab - 1) + 1
        if answers is None:
            with torch.no_grad():
                top_clean = model(torch.tensor([clean])).logits[0, -1].topk(2).indices.tolist()
                top_corrupt = model(torch.tensor([corrupt])).logits[0, -1].topk(2).indices.tolist()
            a = top_clean[0]
            b = top_corrupt[0] if top_corrupt[0] != a else top_clean[1]
        else:
            a, b = answers(clean)
        roles = ["context"] * len(clean)
        roles[swap] = FIELD
        rows.append({"pair_id": i, "clean_token_ids": clean, "corrupt_token_ids": corrupt,
                     "clean_answer_id": a, "corrupt_answer_id": b, "batch": i // 4,
                     "token_roles": roles})
    return pd.DataFrame(rows)


def prune(model, pairs, threshold, roles_by_node=None, order="last_layer_first",
          include_mlps=False, reference="corrupt", chain=3, batch_size=0):
    """circuitflow's pruning: (node, score without it, removed) per step, and the result."""
    table = pairs.sort_values("pair_id", ignore_index=True)
    batch = pair_batches(table.assign(batch=0), 0)[0]
    names = prunable_nodes(layout_of(model), include_mlps)
    keep = keep_positions(roles_by_node or {}, names, (batch.last + 1).tolist(),
                          list(table["token_roles"]), batch.clean.shape[1], "pairs")
    tokens = {"corrupt": batch.corrupt, "clean": batch.clean, "zero": None}[reference]
    with CircuitRunner(model, batch, keep, tokens, include_mlps, batch_size) as runner:
        result = greedy_prune(
            lambda c, base: 100 * runner.metrics(c, base) / runner.full_metric,
            len(names), visiting_order(names, order), threshold, chain,
        )
    return [(names[s.node], s.score_without, s.removed) for s in result.steps], result


def assert_same_decisions(ours, theirs):
    assert [(n, r) for n, _, r in ours] == [(n, r) for n, _, r in theirs]
    np.testing.assert_allclose([s for _, s, _ in ours], [s for _, s, _ in theirs], rtol=1e-4, atol=1e-3)


# -- decisions equal the reference's ---------------------------------------------------------

SETTINGS = {
    "T3, chain of 3": {"threshold": 3.0, "chain": 3},
    "T0, chain of 4, rows in passes of 5": {"threshold": 0.0, "chain": 4, "batch_size": 5},
    "T100, MLPs, first layer first, chain of 5": {
        "threshold": 100.0, "chain": 5, "include_mlps": True, "order": "first_layer_first"},
    "T30, end and a role, clean means, MLPs": {
        "threshold": 30.0, "pairs_seed": 7, "chain": 2, "include_mlps": True, "reference": "clean",
        "roles_by_node": {"default": ["end", FIELD], "l1.h2": ["end"], "l2.mlp": ["all"]}},
    "T10, zero, one at a time": {"threshold": 10.0, "chain": 1, "reference": "zero"},
}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neo"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_decisions_equal_the_sequential_reference(tiny, arch, setting):
    model = load(tiny(arch))
    kwargs = dict(SETTINGS[setting])
    pairs = make_pairs(model, seed=kwargs.pop("pairs_seed", len(setting)))
    ours, _ = prune(model, pairs, **kwargs)
    reference_kwargs = {k: v for k, v in kwargs.items() if k not in ("chain", "batch_size")}
    theirs = reference_prune(model, arch, pairs, **reference_kwargs)
    assert_same_decisions(ours, theirs)
    # Not a degenerate walk: some nodes go, and below T = 100 some stay.
    removed = [r for *_, r in theirs]
    assert any(removed) and (kwargs["threshold"] == 100 or not all(removed))


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    """GPT-2 with l2.h1 and l0.h2 writing nothing (zero W_O slices) and l2.h0 amplified; each
    pair's clean answer is the token whose logit l2.h0 raises most against its mean, the corrupt
    one the token it lowers most among those the model ranks lower."""
    model = load(tiny("gpt2"))
    with torch.no_grad():
        for layer, head in [(2, 1), (0, 2)]:
            model.transformer.h[layer].attn.c_proj.weight[head * D_HEAD : (head + 1) * D_HEAD] = 0
        model.transformer.h[2].attn.c_proj.weight[:D_HEAD] *= 4
    prompts = make_pairs(model, seed=3).to_dict("records")  # the same prompts as below
    z_mean = reference_means(model, "gpt2", prompts, "corrupt")[0]

    def mean_ablated(module, args):
        z = args[0].clone().view(1, -1, N_HEADS, D_HEAD)
        z[0, :, 0] = z_mean[2, : z.shape[1], 0]
        return (z.view(args[0].shape),)

    def answers(clean):
        with torch.no_grad():
            full = model(torch.tensor([clean])).logits[0, -1]
            handle = model.transformer.h[2].attn.c_proj.register_forward_pre_hook(mean_ablated)
            ablated = model(torch.tensor([clean])).logits[0, -1]
            handle.remove()
        moved = full - ablated
        a = int(moved.argmax())
        return a, int(torch.where(full < full[a], moved, torch.inf).argmin())

    pairs = make_pairs(model, seed=3, answers=answers)
    directory = tmp_path_factory.mktemp("planted")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny("gpt2")).save_pretrained(directory)
    return model, pairs, directory


def test_planted_heads(planted):
    model, pairs, _ = planted
    ours, result = prune(model, pairs, threshold=3.0, chain=4)
    theirs = reference_prune(model, "gpt2", pairs, threshold=3.0)
    assert_same_decisions(ours, theirs)
    decided = {name: (score, removed) for name, score, removed in ours}
    assert decided["l2.h0"][0] < 50 and not decided["l2.h0"][1]  # its removal destroys the metric
    assert decided["l2.h1"][1] and decided["l0.h2"][1]  # writing nothing, they go
    assert 0 < int(result.circuit.sum()) < N_LAYERS * N_HEADS


def test_a_head_kept_only_at_end_is_mean_ablated_elsewhere(tiny):
    model = load(tiny("gpt2"))
    pairs = make_pairs(model, seed=11)
    table = pairs.sort_values("pair_id", ignore_index=True)
    rows = table.to_dict("records")
    batch = pair_batches(table.assign(batch=0), 0)[0]
    names = prunable_nodes(layout_of(model), False)
    keep = keep_positions({"l1.h2": ["end"]}, names, (batch.last + 1).tolist(), None,
                          batch.clean.shape[1], "pairs")
    z_mean = reference_means(model, "gpt2", rows, "corrupt")[0][1]  # layer 1
    own, seen = [], []
    c_proj = model.transformer.h[1].attn.c_proj
    with torch.no_grad():
        for row in rows:  # each head's own z, unablated
            handle = c_proj.register_forward_pre_hook(lambda m, a: own.append(a[0][0]))
            model(torch.tensor([row["clean_token_ids"]]))
            handle.remove()
    with CircuitRunner(model, batch, keep, batch.corrupt, False) as runner:
        full = torch.ones(len(names), dtype=torch.bool)
        without_l0h0 = full.clone()
        without_l0h0[names.index("l0.h0")] = False
        # The full circuit, run from layer 0 (it differs from the base there): layer 1's heads
        # see the unablated model below them.
        handle = c_proj.register_forward_hook(lambda m, a, out: seen.append(a[0]))
        runner.metrics(full[None], without_l0h0)
        handle.remove()
    (z,) = seen
    z = z.view(len(rows), -1, N_HEADS, D_HEAD)
    for e, row in enumerate(rows):
        end = len(row["clean_token_ids"]) - 1
        mine = own[e].view(-1, N_HEADS, D_HEAD)
        torch.testing.assert_close(z[e, :end, 2], z_mean[:end, 2])
        torch.testing.assert_close(z[e, end, 2], mine[end, 2])
        assert (z[e, :end, 2] - mine[:end, 2]).abs().max() > 1e-3  # the mean is not its own z
        for head in (0, 1, 3):
            torch.testing.assert_close(z[e, : end + 1, head], mine[:, head])


def test_stage_outputs(planted, tmp_path):
    model, pairs, directory = planted
    pairs = pairs.assign(clean_prompt="", corrupt_prompt="", clean_word="", corrupt_word="")
    write_table(pairs, tmp_path / "pairs.parquet")
    keep = {"default": ["all"], "l1.h1": ["end", FIELD]}
    params = {
        "model": {"source": "local", "path": str(directory), "name": "tiny"},
        "dataset": "toy", "device": "cpu",
        "pruning": {"threshold": 3, "reference": "corrupt", "keep_positions": keep,
                    "order": "last_layer_first", "include_mlps": False, "chain": 0,
                    "batch_size": 0},
        "plots": {"dpi": 60},
    }
    out = {name: tmp_path / file for name, file in [
        ("steps", "pruning_steps.parquet"), ("circuit", "circuit.json"),
        ("score_curve", "score_curve.png"), ("kept_heads", "kept_heads.png")]}
    greedy.run_stage(Params(greedy.STAGE.name, params), pairs=str(tmp_path / "pairs.parquet"),
                     **{k: str(v) for k, v in out.items()})

    steps = read_table(out["steps"], ["step", "node", "layer", "head", "score_without", "removed"])
    theirs = reference_prune(model, "gpt2", pairs, 3.0, roles_by_node=keep)
    assert_same_decisions(list(zip(steps["node"], steps["score_without"], steps["removed"])), theirs)
    assert steps["step"].tolist() == list(range(N_LAYERS * N_HEADS))
    assert [f"l{l}.h{h}" for l, h in zip(steps["layer"], steps["head"])] == steps["node"].tolist()
    circuit = json.loads(out["circuit"].read_text())
    kept = [n for n, _, removed in theirs if not removed]
    assert sorted(circuit["nodes"]) == sorted(kept)
    assert circuit["n_nodes_before"] == N_LAYERS * N_HEADS and circuit["n_nodes_after"] == len(kept)
    last_removal = [s for _, s, removed in theirs if removed][-1]
    assert circuit["score"] == pytest.approx(last_removal, abs=1e-3)
    assert circuit["threshold"] == 3 and circuit["settings"]["keep_positions"] == keep
    for name in ("score_curve", "kept_heads"):
        assert matplotlib.image.imread(out[name]).shape[0] > 100


def test_config_errors_name_the_key(tiny):
    nodes = node_list(False)
    with pytest.raises(ConfigError, match="pruning.keep_positions.*'l7.h0'"):
        keep_positions({"l7.h0": ["end"]}, nodes, [5], None, 5, "pairs.parquet")
    with pytest.raises(ConfigError, match="token_roles.*pairs.parquet"):
        keep_positions({"default": [FIELD]}, nodes, [5], None, 5, "pairs.parquet")
    with pytest.raises(ConfigError, match="no token.*'nowhere'"):
        keep_positions({"default": ["nowhere"]}, nodes, [2], [["a", "b"]], 2, "pairs.parquet")
