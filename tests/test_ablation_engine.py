"""The batched ablation engine must decide what one-at-a-time greedy ``generate`` decides.

The reference below shares no code with the engine: plain torch hooks on the Hugging Face
modules, one unpadded example at a time, replacement values computed from separate runs, and
greedy ``generate`` from the prompt extended to cover the ablated position. Nodes are numbered
as the engine documents (per layer its heads, then its MLP), decoded here on their own.
"""

import contextlib
import random
from functools import cache

import numpy as np
import pytest
import torch
from tiny_models import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.ablation.engine import AblationEngine
from circuitflow.ablation.examples import make_examples
from circuitflow.ablation.replacement import by_method, resample_donors

# (blocks, attention output projection, MLP), written out here independently of layout.py.
PATHS = {
    "gpt2": ("transformer.h", "attn.c_proj", "mlp"),
    "gpt_neo": ("transformer.h", "attn.attention.out_proj", "mlp"),
    "llama": ("model.layers", "self_attn.o_proj", "mlp"),
    "qwen2": ("model.layers", "self_attn.o_proj", "mlp"),
}
N_EXAMPLES = 8


def peaky_model(arch, vocab_size, seed=0, n_layers=2):
    """A random tiny model with larger weights than the default initialisation, so that single
    heads and MLPs often change its greedy output (the default ones hardly ever do)."""
    config = tiny_config(arch, vocab_size, n_layers=n_layers)
    config.initializer_range = 0.1
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def greedy(model, prompt, n_new):
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n_new, do_sample=False, num_beams=1,
        eos_token_id=model.config.vocab_size + 1, pad_token_id=0,  # never stops early
    )
    return out[0, len(prompt):].tolist()


def own_continuations(model, n, seed=0):
    """Random prompts whose answer is the model's greedy continuation: correct by construction."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(6, 14))] for _ in range(n)]
    answers = [greedy(model, p, rng.randint(2, 6)) for p in prompts]
    return prompts, answers


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt_neo"])
def setup(request, tiny_model_dir):
    arch = request.param
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(arch))
    # Three layers for Llama: an edit in the first then reaches later positions through two
    # attention layers, in the others through one or none (the engine's three cases).
    model = peaky_model(arch, len(tokenizer), n_layers=3 if arch == "llama" else 2)
    prompts, answers = own_continuations(model, N_EXAMPLES)
    roles = [["r"] * (len(p) + len(a)) for p, a in zip(prompts, answers)]
    examples = make_examples(range(N_EXAMPLES), prompts, answers, roles, pad_id=0)
    # A small batch size so that batches split and mix nodes, examples and lengths.
    engine = AblationEngine(model, tokenizer, examples, batch_size=37, show_progress=False)
    return arch, model, engine, [p + a for p, a in zip(prompts, answers)], prompts


# -- the independent reference ---------------------------------------------------------------


def module(model, arch, layer, part=None):
    blocks, attn_out, mlp = PATHS[arch]
    path = f"{blocks}.{layer}" + {None: "", "head": f".{attn_out}", "mlp": f".{mlp}"}[part]
    return model.get_submodule(path)


def d_head(model):
    return model.config.hidden_size // model.config.num_attention_heads


def node_of(model, index):
    """(kind, layer, head) of node ``index``: per layer the heads, then the MLP."""
    layer, head = divmod(int(index), model.config.num_attention_heads + 1)
    if head == model.config.num_attention_heads:
        return "mlp", layer, None
    return "head", layer, head


@contextlib.contextmanager
def hooked(model, arch, kind, layer, head, p, value, prefill):
    """Replace one node's output at position p during the forward over all ``prefill`` tokens
    (later decoding steps only compute later positions)."""
    def head_hook(mod, args):
        (x,) = args
        if x.shape[1] != prefill:
            return None
        x = x.clone()
        x[:, p, head * d_head(model):(head + 1) * d_head(model)] = value
        return (x,)

    def output_hook(mod, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if hidden.shape[1] != prefill:
            return None
        hidden = hidden.clone()
        hidden[:, p] = value
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    if kind == "head":
        handles = [module(model, arch, layer, "head").register_forward_pre_hook(head_hook)]
    elif kind == "mlp":
        handles = [module(model, arch, layer, "mlp").register_forward_hook(output_hook)]
    else:  # position: every block's output
        n_layers = model.config.num_hidden_layers
        handles = [
            module(model, arch, l).register_forward_hook(output_hook) for l in range(n_layers)
        ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def hooked_all(model, arch, ablated, p, prefill):
    """Several nodes replaced at once: ``ablated`` lists (kind, layer, head, value)."""
    with contextlib.ExitStack() as stack:
        for kind, layer, head, value in ablated:
            stack.enter_context(hooked(model, arch, kind, layer, head, p, value, prefill))
        yield


def node_outputs(model, arch, seq):
    """Per layer: the heads' outputs [T, H*d_head] and the MLP output [T, d] of one example."""
    return _node_outputs(model, arch, tuple(seq))


@cache
def _node_outputs(model, arch, seq):
    saved = {}
    handles = []
    for l in range(model.config.num_hidden_layers):
        handles.append(module(model, arch, l, "head").register_forward_pre_hook(
            lambda mod, args, l=l: saved.__setitem__(("head", l), args[0][0].clone())))
        handles.append(module(model, arch, l, "mlp").register_forward_hook(
            lambda mod, args, out, l=l: saved.__setitem__(("mlp", l), out[0].clone())))
    with torch.no_grad():
        model(torch.tensor([seq]))
    for handle in handles:
        handle.remove()
    return saved


def replacement(model, arch, seqs, method, kind, layer, head, example, p, donors):
    if kind == "position" or method == "zero":
        return 0.0
    dh = d_head(model)
    if method == "mean":
        outs = [node_outputs(model, arch, s)[(kind, layer)] for s in seqs]
        value = torch.cat(outs).mean(0)
    else:  # resample: the donor example's own output at p
        value = node_outputs(model, arch, seqs[donors[example, p]])[(kind, layer)][p]
    return value[head * dh:(head + 1) * dh] if kind == "head" else value


def reference(model, arch, seq, n_prompt, p, ablated):
    """(failed, logprob_drop) the slow way: greedy generate, and a full forward for log-probs,
    with ``ablated`` ((kind, layer, head, value) each) replaced at position p."""
    start = max(n_prompt, p + 1)
    with hooked_all(model, arch, ablated, p, prefill=start):
        failed = greedy(model, seq[:start], len(seq) - start) != seq[start:]
    ids = torch.tensor([seq])
    checked = torch.arange(max(n_prompt - 1, p), len(seq) - 1)
    with torch.no_grad():
        clean = model(ids).logits[0].log_softmax(-1)
        with hooked_all(model, arch, ablated, p, prefill=len(seq)):
            ablated = model(ids).logits[0].log_softmax(-1)
    targets = ids[0, checked + 1]
    drop = (clean[checked, targets] - ablated[checked, targets]).mean().item()
    return failed, drop


def sample(result, n, seed, extra=None):
    """Up to n entries, half of them failures when there are any, plus ``extra`` ones."""
    rng = np.random.default_rng(seed)
    failed = np.flatnonzero(result.failed)
    passed = np.flatnonzero(~result.failed)
    k = min(len(failed), n // 2)
    picks = [rng.choice(failed, k, replace=False), rng.choice(passed, n - k, replace=False)]
    if extra is not None and len(extra):
        picks.append(rng.choice(extra, min(4, len(extra)), replace=False))
    return np.unique(np.concatenate(picks))


def check_against_reference(setup, result, method, picks, sets=None):
    """Entries ``picks`` of ``result`` against the reference; ``sets`` [S, n_nodes] are the
    node sets ``result.node_set`` indexes (by default one node each)."""
    arch, model, engine, seqs, prompts = setup
    donors = resample_donors(engine.examples.lengths.numpy(), seed=3)
    for i in picks:
        e, p, k = result.example[i], result.position[i], result.node_set[i]
        if k < 0:
            kinds = [("position", None, None)]
        else:
            members = np.flatnonzero(sets[k]) if sets is not None else [k]
            kinds = [node_of(model, j) for j in members]
        ablated = [
            (kind, layer, head,
             replacement(model, arch, seqs, method, kind, layer, head, e, p, donors))
            for kind, layer, head in kinds
        ]
        failed, drop = reference(model, arch, seqs[e], len(prompts[e]), p, ablated)
        where = f"{kinds} example={e} position={p}"
        assert result.failed[i] == failed, where
        assert result.logprob_drop[i] == pytest.approx(drop, abs=2e-4), where


# -- tests -----------------------------------------------------------------------------------


def test_node_names_are_the_vocabulary_in_engine_order(setup):
    arch, model, engine, _, _ = setup
    n_heads = model.config.num_attention_heads
    expected = []
    for l in range(model.config.num_hidden_layers):
        expected += [f"l{l}.h{h}" for h in range(n_heads)] + [f"l{l}.mlp"]
    assert engine.node_names == expected


@pytest.mark.parametrize("method", ["mean", "zero", "resample"])
def test_node_ablation_equals_greedy_generate(setup, method):
    arch, model, engine, seqs, prompts = setup
    if arch == "gpt_neo" and method != "mean":
        pytest.skip("two architectures cover every method; GPT-Neo checks the mean")
    result = engine.ablate_each_node(by_method(method, engine, seed=3))
    assert result.failed.any() and not result.failed.all()
    # Every node, every example, every position up to T-2 (less resample's donorless ones).
    n_nodes = len(engine.node_names)
    expected = sum(len(s) - 1 for s in seqs) * n_nodes
    assert len(result.failed) == expected or (
        method == "resample" and len(result.failed) < expected
    )
    # Last-layer nodes before the answer are decided without a forward pass: check some too.
    layer = [node_of(model, k)[1] for k in result.node_set]
    shortcut = np.flatnonzero(
        (np.array(layer) == model.config.num_hidden_layers - 1)
        & (result.position < np.array([len(p) for p in prompts])[result.example] - 1)
    )
    check_against_reference(setup, result, method, sample(result, 16, seed=1, extra=shortcut))


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_node_set_ablation_equals_greedy_generate(setup, method):
    """Several heads and MLPs ablated together in one intervention, lowest in each layer."""
    arch, model, engine, seqs, prompts = setup
    if arch == "gpt_neo" and method != "mean":
        pytest.skip("two architectures cover every method; GPT-Neo checks the mean")
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    last = n_layers - 1

    def index(layer, head=None):
        return layer * (n_heads + 1) + (n_heads if head is None else head)

    members = [
        [index(last, 0), index(last)],  # the last layer only
        [index(last - 1, 1), index(last - 1, 2), index(last, 3)],
        [index(0, 0), index(0), index(last, 1)],
        [index(0, 1), index(0, 2), index(0, 3), index(last - 1)],
        [index(l, h) for l in range(n_layers) for h in range(n_heads)],  # every head
    ]
    sets = np.zeros((len(members), len(engine.node_names)), dtype=bool)
    for k, nodes in enumerate(members):
        sets[k, nodes] = True
    rng = np.random.default_rng(4)
    lengths = np.array([len(s) for s in seqs])
    example = rng.integers(0, len(seqs), 30)
    position = rng.integers(0, lengths[example] - 1)
    node_set = np.arange(30) % len(members)
    # Resample has no donor where no other example is as long.
    donors = resample_donors(lengths, seed=3)
    keep = (donors[example, position] >= 0) | (method != "resample")
    example, position, node_set = example[keep], position[keep], node_set[keep]
    values = by_method(method, engine, seed=3)
    result = engine.ablate(example, node_set, position, sets, values)
    assert (result.example == example).all() and (result.node_set == node_set).all()
    if method == "resample":  # asking for a position without a donor is refused
        tried = np.arange(donors.shape[1]) < lengths[:, None] - 1
        (e, p), *_ = np.argwhere((donors < 0) & tried)
        with pytest.raises(ValueError, match="no value"):
            engine.ablate([e], [0], [p], sets, values)
    assert result.failed.any() and not result.failed.all()
    check_against_reference(setup, result, method, range(len(example)), sets)


def test_position_ablation_equals_greedy_generate(setup):
    arch, model, engine, seqs, prompts = setup
    result = engine.ablate_positions()
    assert len(result.failed) == sum(len(s) - 1 for s in seqs)
    assert result.failed.any() and not result.failed.all()
    check_against_reference(setup, result, "zero", sample(result, 12, seed=2))


def test_head_with_zero_output_weights_never_fails(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("gpt2"))
    model = peaky_model("gpt2", len(tokenizer))
    layer, head, dh = 0, 1, d_head(model)
    with torch.no_grad():  # GPT-2's Conv1D weight is [in, out]: the head's rows are its inputs
        model.transformer.h[layer].attn.c_proj.weight[head * dh:(head + 1) * dh] = 0
    prompts, answers = own_continuations(model, 6, seed=4)
    roles = [["r"] * (len(p) + len(a)) for p, a in zip(prompts, answers)]
    engine = AblationEngine(
        model, tokenizer, make_examples(range(6), prompts, answers, roles, 0), show_progress=False
    )
    for method in ("zero", "resample"):
        result = engine.ablate_each_node(by_method(method, engine, seed=0))
        mine = np.array([node_of(model, k) == ("head", layer, head) for k in result.node_set])
        assert mine.sum() > 0 and result.failed[~mine].any()
        assert not result.failed[mine].any()
        assert np.abs(result.logprob_drop[mine]).max() < 1e-5


def test_resample_donors_are_seeded_other_examples_covering_the_position():
    lengths = np.array([5, 9, 7, 9, 3])
    donors = resample_donors(lengths, seed=11)
    assert (donors == resample_donors(lengths, seed=11)).all()
    assert (donors != resample_donors(lengths, seed=12)).any()
    for e in range(len(lengths)):
        for p in range(lengths[e]):
            d = donors[e, p]
            covering = [o for o in range(len(lengths)) if o != e and lengths[o] > p]
            assert (d == -1) if not covering else (d in covering)
