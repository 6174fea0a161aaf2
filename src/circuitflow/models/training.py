"""Train the built-in TinySQL model: a small GPT-2 trained from scratch on generated CS1-CS3.

Token layout (docs/design.md): prompt ids + answer ids, tokenized separately without special
tokens, then EOS. The loss covers only the answer and the EOS, as in TinySQL fine-tuning.
"""

from __future__ import annotations

import logging
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

from circuitflow.batching import right_padded
from circuitflow.clean import first_wrong_positions
from circuitflow.data.examples import COMMAND_SETS, generate_examples
from circuitflow.device import resolve_device
from circuitflow.errors import ConfigError
from circuitflow.models.tokenizer import train_tokenizer
from circuitflow.outputs import atomic_path, save_figure
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

IGNORE = -100  # label value cross_entropy skips
# Derived seeds keep training and held-out data apart from each other and from data.seed.
TRAIN_STREAM, EVAL_STREAM = 1, 2


def derived_seed(seed: int, stream: int, command_set: str) -> int:
    entropy = [seed, stream, COMMAND_SETS.index(command_set)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def build_example(
    prompt_ids: list[int], answer_ids: list[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """Input ids and labels for one example; prompt positions are masked from the loss."""
    input_ids = list(prompt_ids) + list(answer_ids) + [eos_id]
    labels = [IGNORE] * len(prompt_ids) + list(answer_ids) + [eos_id]
    return input_ids, labels


def _generate(settings: dict, command_set: str, n_examples: int, stream: int) -> pd.DataFrame:
    return generate_examples(
        command_set,
        n_examples=n_examples,
        seed=derived_seed(settings["seed"], stream, command_set),
        min_cols=settings["min_cols"],
        max_cols=settings["max_cols"],
        use_synonyms_table=settings["use_synonyms_table"],
        use_synonyms_field=settings["use_synonyms_field"],
    )


def _tokenize(tokenizer, texts) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _pad_batch(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (padding ignored by the loss)."""
    return (
        right_padded([ids for ids, _ in examples], pad_id),
        right_padded([labels for _, labels in examples], IGNORE),
    )


def answer_loss(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token loss over labelled positions.

    The LM head runs only where there is a label: most positions are prompt, so this skips most
    of the vocabulary projection.
    """
    hidden = model.transformer(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return F.cross_entropy(model.lm_head(hidden[keep]), targets[keep])


def _heldout_accuracy(
    model, heldout: dict, eos_id: int, batch_size: int
) -> dict[str, tuple[int, int]]:
    """(n_examples, n_correct) per command set: greedy decoding reproduces the SQL, then EOS."""
    model.eval()
    results = {}
    for command_set, (prompt_ids, answer_ids) in heldout.items():
        wrong = first_wrong_positions(model, prompt_ids, answer_ids, eos_id, batch_size)
        results[command_set] = (len(wrong), sum(pos is None for pos in wrong))
    model.train()
    return results


def _plot_curve(curve: pd.DataFrame, command_sets: list[str], plot_path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    loss_ax.plot(curve["step"], curve["loss"], linewidth=0.6, color="tab:gray", label="per step")
    smooth = curve["loss"].rolling(50, min_periods=1).mean()
    loss_ax.plot(curve["step"], smooth, color="black", label="50-step mean")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (answer tokens, log)")
    loss_ax.legend()
    loss_ax.set_title("Built-in TinySQL model: training curve")
    for command_set in command_sets:
        points = curve.dropna(subset=[f"accuracy_{command_set}"])
        acc_ax.plot(
            points["step"], 100 * points[f"accuracy_{command_set}"],
            marker="o", label=command_set.upper(),
        )
    acc_ax.set_ylim(0, 102)  # room for markers at 100%
    acc_ax.set_xlabel("training step")
    acc_ax.set_ylabel("held-out exact match (%)")
    acc_ax.legend()
    save_figure(fig, plot_path)


def run_stage(params: dict, model, curve, plot, heldout) -> None:
    settings = params["training"]
    device = resolve_device(params.get("device", "auto"))
    torch.manual_seed(settings["seed"])
    started = time.monotonic()

    command_sets = settings["command_sets"]
    train = {
        cs: _generate(settings, cs, settings["n_train_examples"], TRAIN_STREAM)
        for cs in command_sets
    }
    # Prompt and SQL are tokenized apart (docs/design.md), so the tokenizer learns them apart.
    tokenizer = train_tokenizer(
        [text for df in train.values() for text in (*df["prompt"], *df["sql"])],
        settings["vocab_size"],
    )
    eos_id = tokenizer.eos_token_id

    examples = []
    for df in train.values():
        examples += [
            build_example(p, a, eos_id)
            for p, a in zip(_tokenize(tokenizer, df["prompt"]), _tokenize(tokenizer, df["sql"]))
        ]
    longest = max(len(ids) for ids, _ in examples)
    if longest > settings["n_ctx"]:
        raise ConfigError(
            f"config key 'training.n_ctx': {settings['n_ctx']} is shorter than the longest "
            f"training example ({longest} tokens)"
        )

    heldout_ids = {}
    for cs in command_sets:
        df = _generate(settings, cs, settings["n_eval_examples"], EVAL_STREAM)
        df = df[~df["prompt"].isin(set(train[cs]["prompt"]))]  # held out means unseen
        heldout_ids[cs] = (_tokenize(tokenizer, df["prompt"]), _tokenize(tokenizer, df["sql"]))
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
    net.train()
    log.info("model: %d parameters on %s", net.num_parameters(), device)

    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings["learning_rate"], betas=(0.9, 0.98),
        weight_decay=settings["weight_decay"],
    )
    max_steps = settings["max_steps"]
    schedule = get_cosine_schedule_with_warmup(optimizer, settings["warmup_steps"], max_steps)
    # Batches drawn at random, not grouped by length: length tracks the command set, and
    # single-command-set batches learned CS2/CS3 markedly slower in tuning.
    order = torch.Generator().manual_seed(settings["seed"])
    batch_size = settings["batch_size"]

    rows = []
    for step in range(1, max_steps + 1):
        batch = torch.randint(len(examples), (batch_size,), generator=order).tolist()
        input_ids, labels = _pad_batch([examples[i] for i in batch], tokenizer.pad_token_id)
        loss = answer_loss(net, input_ids.to(device), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        rows.append({"step": step, "loss": loss.item()})
        if step % settings["eval_every"] and step < max_steps:
            continue
        accuracy = _heldout_accuracy(net, heldout_ids, eos_id, batch_size)
        rows[-1].update({f"accuracy_{cs}": n_ok / n for cs, (n, n_ok) in accuracy.items()})
        log.info(
            "step %d/%d loss %.4f held-out exact match: %s (%.0f s)", step, max_steps, loss.item(),
            ", ".join(f"{cs} {100 * n_ok / n:.1f}%" for cs, (n, n_ok) in accuracy.items()),
            time.monotonic() - started,
        )
        if min(n_ok / n for n, n_ok in accuracy.values()) >= settings["early_stop_accuracy"]:
            log.info(
                "every held-out set is at %.1f%% or more: stopping",
                100 * settings["early_stop_accuracy"],
            )
            break

    curve_df = pd.DataFrame(
        rows, columns=["step", "loss", *(f"accuracy_{cs}" for cs in command_sets)]
    )
    heldout_df = pd.DataFrame(
        [
            {"command_set": cs, "n_examples": n, "n_correct": n_ok, "accuracy": n_ok / n}
            for cs, (n, n_ok) in accuracy.items()
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
        _plot_curve(curve_df, command_sets, plot_tmp)
    log.info("trained in %.0f s, %d steps", time.monotonic() - started, step)
