"""Stage train-model: a built-in model, a small GPT-2 trained from scratch on its datasets.

Every task trains through this one trainer: the task draws the examples and makes the
tokenizer; the recipe (``circuitflow.rules.model_recipe``) merges the ``training`` section, the
task's architecture defaults and the model entry's own ``training`` keys. Token layout
(docs/design.md): prompt ids + answer ids, tokenized separately without special tokens, then
EOS. The loss covers only the answer and the EOS, as in TinySQL fine-tuning. An attention-only
model (``attn_only``) keeps its MLPs at zero: their weights start at zero and never train.
"""

from __future__ import annotations

import logging
import time
import zlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

from circuitflow.batching import right_padded
from circuitflow.clean import first_wrong_position, greedy_answer_predictions
from circuitflow.device import resolve_device
from circuitflow.errors import ConfigError
from circuitflow.outputs import atomic_path, save_figure
from circuitflow.stage import Stage
from circuitflow.tables import write_table
from circuitflow.tasks import task_of

log = logging.getLogger(__name__)

IGNORE = -100  # label value cross_entropy skips
# Derived seeds keep training and held-out data apart from each other and from data.seed.
TRAIN_STREAM, EVAL_STREAM = 1, 2


def derived_seed(seed: int, stream: int, dataset: str) -> int:
    entropy = [seed, stream, zlib.crc32(dataset.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def build_example(
    prompt_ids: list[int], answer_ids: list[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """Input ids and labels for one example; prompt positions are masked from the loss."""
    input_ids = list(prompt_ids) + list(answer_ids) + [eos_id]
    labels = [IGNORE] * len(prompt_ids) + list(answer_ids) + [eos_id]
    return input_ids, labels


def _generate(datasets: dict, name: str, n_examples: int, seed: int, stream: int) -> pd.DataFrame:
    entry = datasets[name]
    return task_of(entry).examples(entry, n_examples, derived_seed(seed, stream, name))


def _tokenize(tokenizer, texts) -> list[list[int]]:
    # The Rust tokenizer directly: the same ids, without the Python wrapper's per-text
    # BatchEncoding work (about half the time on 90,000 prompts).
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def _pad_batch(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (padding ignored by the loss)."""
    return (
        right_padded([ids for ids, _ in examples], pad_id),
        right_padded([labels for _, labels in examples], IGNORE),
    )


def answer_loss(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, labels: torch.Tensor,
    n_labels: int | None = None,
) -> torch.Tensor:
    """Next-token loss summed over labelled positions and divided by ``n_labels`` (default:
    their number here, the mean).

    The LM head runs only where there is a label: most positions are prompt, so this skips most
    of the vocabulary projection.
    """
    hidden = model.transformer(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    total = F.cross_entropy(model.lm_head(hidden[keep]), targets[keep], reduction="sum")
    return total / (int(keep.sum()) if n_labels is None else n_labels)


def batch_loss_backward(
    model: GPT2LMHeadModel, examples: list[tuple[list[int], list[int]]], pad_id: int,
    micro_batch_size: int, device: torch.device,
) -> float:
    """Backpropagate the batch's mean answer loss, computed in micro-batches of similar length.

    Sorted by length, each micro-batch is padded only to its own longest example: TinySQL's
    random batches mix lengths from 40 to 135 tokens, and one padded batch was 40% padding.
    The loss is each micro-batch's sum over the whole batch's label count, so the gradient is
    the whole batch's.
    """
    examples = sorted(examples, key=lambda example: len(example[0]))
    n_labels = sum(label != IGNORE for _, labels in examples for label in labels[1:])
    loss = torch.zeros((), dtype=torch.float64, device=device)  # what summing Python floats did
    for start in range(0, len(examples), micro_batch_size):
        input_ids, labels = _pad_batch(examples[start:start + micro_batch_size], pad_id)
        part = answer_loss(model, input_ids.to(device), labels.to(device), n_labels)
        part.backward()
        loss += part.detach()
    return loss.item()  # one device sync per step, not one per micro-batch


def _heldout_accuracy(
    model, heldout: dict, eos_id: int, batch_size: int
) -> dict[str, tuple[int, int, float]]:
    """Per dataset: n_examples, n_correct (greedy decoding reproduces the answer, then EOS) and
    the share of answer tokens predicted right under teacher forcing."""
    model.eval()
    results = {}
    for name, (prompt_ids, answer_ids) in heldout.items():
        predicted = greedy_answer_predictions(model, prompt_ids, answer_ids, eos_id, batch_size)
        wrong = [first_wrong_position(p, a, eos_id) for p, a in zip(predicted, answer_ids)]
        right = sum(int(x == y) for p, a in zip(predicted, answer_ids) for x, y in zip(p, a))
        tokens = sum(map(len, answer_ids))
        results[name] = (len(wrong), sum(pos is None for pos in wrong), right / max(tokens, 1))
    model.train()
    return results


def _plot_curve(curve: pd.DataFrame, datasets: list[str], model_name: str, plot_path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    loss_ax.plot(curve["step"], curve["loss"], linewidth=0.6, color="tab:gray", label="per step")
    smooth = curve["loss"].rolling(50, min_periods=1).mean()
    loss_ax.plot(curve["step"], smooth, color="black", label="50-step mean")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (answer tokens, log)")
    loss_ax.legend()
    loss_ax.set_title(f"Built-in model {model_name}: training curve")
    for name in datasets:
        points = curve.dropna(subset=[f"accuracy_{name}"])
        acc_ax.plot(points["step"], 100 * points[f"accuracy_{name}"], marker="o", label=name)
    acc_ax.set_ylim(0, 102)  # room for markers at 100%
    acc_ax.set_xlabel("training step")
    acc_ax.set_ylabel("held-out exact match (%)")
    acc_ax.legend()
    save_figure(fig, plot_path)


def attention_only(net: GPT2LMHeadModel) -> None:
    """Zero every MLP and keep it so: a zero output projection makes the MLP's output zero."""
    for block in net.transformer.h:
        for parameter in block.mlp.parameters():
            parameter.data.zero_()
            parameter.requires_grad_(False)


def run_stage(params, model, curve, plot, heldout) -> None:
    recipe = params["recipe"]
    settings, datasets = recipe["training"], recipe["datasets"]
    device = resolve_device(params["device"])
    torch.manual_seed(settings["seed"])
    started = time.monotonic()

    names = list(datasets)
    train = {
        name: _generate(datasets, name, settings["n_train_examples"], settings["seed"], TRAIN_STREAM)
        for name in names
    }
    # Prompt and answer are tokenized apart (docs/design.md), so the tokenizer learns them apart.
    tokenizer = task_of(datasets[names[0]]).tokenizer(
        datasets[names[0]], [text for df in train.values() for text in (*df["prompt"], *df["answer"])],
        settings["vocab_size"],
    )
    eos_id = tokenizer.eos_token_id

    key = f"models.{params['model']}"
    examples = []
    for name, df in train.items():
        prompts, answers = _tokenize(tokenizer, df["prompt"]), _tokenize(tokenizer, df["answer"])
        # A task's tokenizer is made from the first dataset's options; another's may need more
        # words, which would silently become the unknown token.
        if any(tokenizer.unk_token_id in ids for ids in prompts + answers):
            raise ConfigError(
                f"config key '{key}.train_on': the tokenizer made for dataset {names[0]} cannot "
                f"spell every example of {name}; train on datasets whose options share one "
                "vocabulary"
            )
        examples += [build_example(p, a, eos_id) for p, a in zip(prompts, answers)]
    longest = max(len(ids) for ids, _ in examples)
    if longest > settings["n_ctx"]:
        raise ConfigError(
            f"config key '{key}.training.n_ctx': {settings['n_ctx']} is shorter than the "
            f"longest training example ({longest} tokens)"
        )

    heldout_ids = {}
    for name in names:
        df = _generate(datasets, name, settings["n_eval_examples"], settings["seed"], EVAL_STREAM)
        df = df[~df["prompt"].isin(set(train[name]["prompt"]))]  # held out means unseen
        if df.empty:
            raise ConfigError(
                f"config key '{key}.training.n_train_examples': every held-out example of "
                f"dataset {name} is also a training example; its options allow too few distinct "
                "examples for this many (train on fewer, or widen the dataset)"
            )
        heldout_ids[name] = (_tokenize(tokenizer, df["prompt"]), _tokenize(tokenizer, df["answer"]))
    log.info(
        "data: %d training examples, tokenizer of %d tokens (%.0f s)",
        len(examples), len(tokenizer), time.monotonic() - started,
    )

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=settings["n_ctx"],
        n_embd=settings["d_model"],
        n_layer=settings["n_layers"],
        n_head=settings["n_heads"],
        initializer_range=settings["init_std"],
        # Exact GELU is one fused kernel; GPT-2's tanh approximation costs ~15% of a CPU step.
        activation_function="gelu",
        # Dropout only slows learning a synthetic task with unlimited fresh data.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    net = GPT2LMHeadModel(config).to(device)
    if settings["attn_only"]:
        attention_only(net)
    net.train()
    log.info("model: %d parameters on %s", net.num_parameters(), device)

    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=settings["learning_rate"],
        betas=(0.9, 0.98), weight_decay=settings["weight_decay"],
    )
    max_steps = settings["max_steps"]
    schedule = get_cosine_schedule_with_warmup(optimizer, settings["warmup_steps"], max_steps)
    # Batches drawn at random, not grouped by length: length tracks the dataset, and
    # single-command-set batches learned CS2/CS3 markedly slower in tuning.
    order = torch.Generator().manual_seed(settings["seed"])
    batch_size = settings["batch_size"]

    rows = []
    for step in range(1, max_steps + 1):
        batch = torch.randint(len(examples), (batch_size,), generator=order).tolist()
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss_backward(
            net, [examples[i] for i in batch], tokenizer.pad_token_id,
            settings.get("micro_batch_size", batch_size), device,
        )
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        rows.append({"step": step, "loss": loss})
        if step % settings["eval_every"] and step < max_steps:
            continue
        accuracy = _heldout_accuracy(net, heldout_ids, eos_id, batch_size)
        rows[-1].update({f"accuracy_{name}": n_ok / n for name, (n, n_ok, _) in accuracy.items()})
        log.info(
            "step %d/%d loss %.4f held-out exact match: %s (%.0f s)", step, max_steps, loss,
            ", ".join(f"{name} {100 * n_ok / n:.1f}% ({100 * tokens:.2f}% of tokens)"
                      for name, (n, n_ok, tokens) in accuracy.items()),
            time.monotonic() - started,
        )
        if min(n_ok / n for n, n_ok, _ in accuracy.values()) >= settings["early_stop_accuracy"]:
            log.info(
                "every held-out set is at %.1f%% or more: stopping",
                100 * settings["early_stop_accuracy"],
            )
            break

    curve_df = pd.DataFrame(rows, columns=["step", "loss", *(f"accuracy_{n}" for n in names)])
    heldout_df = pd.DataFrame(
        [
            {"dataset": name, "n_examples": n, "n_correct": n_ok, "accuracy": n_ok / n,
             "token_accuracy": tokens}
            for name, (n, n_ok, tokens) in accuracy.items()
        ]
    )
    # All four outputs appear together or not at all; the model directory, which later stages
    # trust, is renamed into place last.
    with (
        atomic_path(model, directory=True) as model_tmp,
        atomic_path(curve) as curve_tmp,
        atomic_path(heldout) as heldout_tmp,
        atomic_path(plot) as plot_tmp,
    ):
        net.eval().cpu().save_pretrained(model_tmp)
        tokenizer.save_pretrained(model_tmp)
        write_table(curve_df, curve_tmp)
        write_table(heldout_df, heldout_tmp)
        _plot_curve(curve_df, names, params["model"], plot_tmp)
    log.info("trained in %.0f s, %d steps", time.monotonic() - started, step)


STAGE = Stage(
    "train-model", run_stage, (), ("model", "curve", "plot", "heldout"),
    reads=("recipe", "device"), job=("model",),
)
