"""The built-in model's training stage, on a tiny configuration (seconds, not minutes)."""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from circuitflow.config import validate_config
from circuitflow.errors import ConfigError
from circuitflow.models import training
from circuitflow.models.loader import load_model
from circuitflow.rules import job_params
from circuitflow.stage import Params

TINYSQL = {name: {"task": "tinysql", "command_set": name} for name in ("cs1", "cs2", "cs3")}
TINY = {
    "seed": 1000,
    "n_train_examples": 100,
    "n_eval_examples": 10,
    "vocab_size": 400,
    "n_layers": 2,
    "n_heads": 2,
    "d_model": 16,
    "n_ctx": 256,
    "batch_size": 8,
    "learning_rate": 0.01,
    "warmup_steps": 5,
    "weight_decay": 0.01,
    "max_steps": 30,
    "eval_every": 15,
    "early_stop_accuracy": 1.0,
}


def stage_params(datasets, train_on, settings):
    """The params the workflow gives the training stage of a built-in model ``tiny``."""
    config = validate_config({
        "datasets": datasets,
        "models": {"tiny": {"source": "builtin", "train_on": list(train_on), "training": settings}},
        "device": "cpu",
    })
    return Params("train-model", job_params("train-model", config, {"model": "tiny"}))


def train(out_dir, datasets=TINYSQL, train_on=("cs1", "cs2", "cs3"), settings=TINY, **overrides):
    paths = {
        "model": out_dir / "model",
        "curve": out_dir / "curve.parquet",
        "plot": out_dir / "curve.png",
        "heldout": out_dir / "heldout.parquet",
    }
    training.run_stage(stage_params(datasets, train_on, {**settings, **overrides}), **paths)
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("train"))


def test_labels_mask_the_prompt():
    input_ids, labels = training.build_example([5, 6, 7], [8, 9], eos_id=0)
    assert input_ids == [5, 6, 7, 8, 9, 0]
    assert labels == [training.IGNORE] * 3 + [8, 9, 0]


def test_training_ids_are_the_tokenizers_own():
    from circuitflow.models.tokenizer import train_tokenizer
    from circuitflow.tasks import tinysql

    texts = list(tinysql.examples({"command_set": "cs3"}, 200, seed=3)["prompt"])
    texts += ["", " leading space", "SELECT a.b FROM a JOIN c ON a.id = c.id"]
    tokenizer = train_tokenizer(texts[:100], vocab_size=300)
    wanted = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    assert training._tokenize(tokenizer, pd.Series(texts)) == wanted


def test_answer_loss_counts_only_answer_and_eos():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=20, n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()  # eval: no dropout
    examples = [
        training.build_example([1, 2, 3, 4], [5, 6], 0),
        training.build_example([1, 2], [7, 8, 9], 0),
    ]
    input_ids, labels = training._pad_batch(examples, pad_id=0)
    loss = training.answer_loss(model, input_ids, labels)
    # Hugging Face's own shifted loss over the same labels.
    assert torch.allclose(loss, model(input_ids, labels=labels).loss)
    # Exactly the answer tokens and the EOS of each example are scored: (2 + 1) + (3 + 1).
    logits = model(input_ids).logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != training.IGNORE
    assert keep.sum() == 7
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[keep], targets[keep]))


@pytest.mark.parametrize("micro_batch_size", [1, 2, 3, 5])
def test_micro_batches_give_the_whole_batch_gradient(micro_batch_size):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=20, n_positions=16, n_embd=8, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    lengths = [(4, 2), (1, 5), (7, 1), (2, 2), (3, 6)]
    examples = [
        training.build_example(list(range(1, 1 + p)), list(range(10, 10 + a)), 0)
        for p, a in lengths
    ]
    # Hugging Face's own mean loss over one right-padded batch of all five.
    input_ids, labels = training._pad_batch(examples, pad_id=0)
    expected_loss = model(input_ids, labels=labels).loss
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))

    loss = training.batch_loss_backward(model, examples, 0, micro_batch_size, torch.device("cpu"))
    assert loss == pytest.approx(expected_loss.item(), rel=1e-6)
    for parameter, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-5, atol=1e-7)


def test_saved_model_loads(trained):
    model = AutoModelForCausalLM.from_pretrained(trained["model"])
    tokenizer = AutoTokenizer.from_pretrained(trained["model"])
    assert model.config.model_type == "gpt2"
    assert model.config.n_layer == TINY["n_layers"] and model.config.n_head == TINY["n_heads"]
    assert tokenizer.eos_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    loaded = load_model({"source": "builtin", "path": str(trained["model"])})
    assert loaded.tokenizer.pad_token_id is not None


def test_curve_and_heldout_tables(trained):
    curve = pd.read_parquet(trained["curve"])
    assert list(curve.columns) == ["step", "loss", "accuracy_cs1", "accuracy_cs2", "accuracy_cs3"]
    assert curve["step"].tolist() == list(range(1, TINY["max_steps"] + 1))
    assert curve["loss"].head(5).mean() > curve["loss"].tail(5).mean()
    evaluated = curve.dropna()
    assert evaluated["step"].tolist() == [15, 30]
    assert evaluated[["accuracy_cs1", "accuracy_cs2", "accuracy_cs3"]].stack().between(0, 1).all()

    heldout = pd.read_parquet(trained["heldout"])
    assert list(heldout.columns) == ["dataset", "n_examples", "n_correct", "accuracy",
                                     "token_accuracy"]
    assert (heldout["token_accuracy"].between(0, 1)).all()
    assert heldout["dataset"].tolist() == ["cs1", "cs2", "cs3"]
    assert heldout["n_examples"].between(1, TINY["n_eval_examples"]).all()
    assert (heldout["n_correct"] <= heldout["n_examples"]).all()
    expected = heldout["n_correct"] / heldout["n_examples"]
    assert heldout["accuracy"].tolist() == pytest.approx(expected.tolist())
    # The final table is the last evaluation on the curve.
    assert heldout["accuracy"].tolist() == pytest.approx(evaluated.iloc[-1, 2:].tolist())
    assert trained["plot"].stat().st_size > 0


def test_same_config_same_weights(trained, tmp_path):
    again = train(tmp_path)
    first = load_file(trained["model"] / "model.safetensors")
    second = load_file(again["model"] / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    first_tokenizer, second_tokenizer = (run["model"] / "tokenizer.json" for run in (trained, again))
    assert first_tokenizer.read_text() == second_tokenizer.read_text()


def test_heldout_data_differs_from_training_data():
    datasets = stage_params(TINYSQL, ["cs1"], TINY)["recipe"]["datasets"]
    train_prompts, eval_prompts = (
        set(training._generate(datasets, "cs1", 500, 1000, stream)["prompt"])
        for stream in (training.TRAIN_STREAM, training.EVAL_STREAM)
    )
    assert train_prompts != eval_prompts
    assert training.derived_seed(1000, training.TRAIN_STREAM, "cs1") != training.derived_seed(
        1000, training.EVAL_STREAM, "cs1"
    )


def test_failure_leaves_no_output(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    # Fails while the outputs are being written, after the model was saved to its temporary name.
    monkeypatch.setattr(training, "_plot_curve", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        train(tmp_path, max_steps=2, eval_every=2)
    assert list(tmp_path.iterdir()) == []


def test_early_stop(tmp_path):
    paths = train(tmp_path, early_stop_accuracy=0.0, eval_every=5)
    assert pd.read_parquet(paths["curve"])["step"].max() == 5


def test_init_std_sets_the_initial_weights_scale(tmp_path):
    # A learning rate this small leaves the weights where initialisation put them.
    paths = train(tmp_path, init_std=0.3, max_steps=1, eval_every=1, learning_rate=1e-12)
    weights = load_file(paths["model"] / "model.safetensors")
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"):
        assert weights[name].std().item() == pytest.approx(0.3, rel=0.1), name


def test_datasets_limit_what_is_learned_and_evaluated(tmp_path):
    paths = train(tmp_path, train_on=["cs2"], max_steps=2, eval_every=2)
    assert pd.read_parquet(paths["heldout"])["dataset"].tolist() == ["cs2"]
    assert list(pd.read_parquet(paths["curve"]).columns) == ["step", "loss", "accuracy_cs2"]


# --- sorting: an attention-only model through the same trainer ----------------------------------

SORTING = {
    "short": {"task": "sorting", "length": 3, "max_value": 9, "class_output": 2},
    "long": {"task": "sorting", "length": 5, "max_value": 9, "class_output": 2},
}
# The task's architecture (1 layer, attention only) at a smaller width, for a few hundred steps.
SORTING_TINY = {"n_train_examples": 300, "n_eval_examples": 20, "d_model": 16, "batch_size": 16,
                "learning_rate": 0.01, "warmup_steps": 10, "max_steps": 200, "eval_every": 100,
                "early_stop_accuracy": 1.0}


@pytest.fixture(scope="module")
def sorter(tmp_path_factory):
    return train(tmp_path_factory.mktemp("sorter"), SORTING, ["short", "long"], SORTING_TINY)


def test_a_sorting_model_trains_with_held_out_accuracy_per_dataset(sorter):
    heldout = pd.read_parquet(sorter["heldout"])
    assert heldout["dataset"].tolist() == ["short", "long"]
    assert (heldout["n_examples"] > 0).all() and heldout["accuracy"].between(0, 1).all()
    curve = pd.read_parquet(sorter["curve"])
    assert list(curve.columns) == ["step", "loss", "accuracy_short", "accuracy_long"]
    assert curve["step"].max() == SORTING_TINY["max_steps"]
    assert curve["loss"].head(10).mean() > curve["loss"].tail(10).mean()  # attention learns


def test_an_attention_only_model_keeps_its_mlps_at_zero(sorter):
    model = AutoModelForCausalLM.from_pretrained(sorter["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(sorter["model"])
    assert model.config.n_layer == 1  # the task's architecture, not the section's default
    for block in model.transformer.h:
        for name, parameter in block.mlp.named_parameters():
            assert torch.count_nonzero(parameter) == 0, name

    outputs = []
    hooks = [block.mlp.register_forward_hook(lambda module, args, out: outputs.append(out))
             for block in model.transformer.h]
    ids = tokenizer("START 3 1 2 STOP 1 2 3", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == model.config.n_layer
    assert all(out.shape[-1] == model.config.n_embd and torch.count_nonzero(out) == 0
               for out in outputs)


@pytest.mark.parametrize(
    "datasets, changes, message",
    [
        ({"few": {"task": "sorting", "length": 5, "max_value": 5, "class_output": 2},
          "more": {"task": "sorting", "length": 5, "max_value": 9, "class_output": 2}}, {},
         ("'models.tiny.train_on': the tokenizer made for dataset few cannot spell every "
          "example of more")),
        ({"few": {"task": "sorting", "length": 2, "max_value": 1, "class_output": 2}}, {},
         "'models.tiny.training.n_train_examples': every held-out example of dataset few"),
        ({"few": {"task": "sorting", "length": 5, "max_value": 5, "class_output": 2}},
         {"n_ctx": 8}, "'models.tiny.training.n_ctx': 8 is shorter than the longest"),
    ],
)
def test_datasets_the_trainer_cannot_use_are_named(tmp_path, datasets, changes, message):
    with pytest.raises(ConfigError) as err:
        train(tmp_path, datasets, list(datasets), SORTING_TINY, **{**changes, "max_steps": 2})
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []
