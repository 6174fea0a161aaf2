"""Clean accuracy: which examples a model answers exactly under greedy decoding.

Greedy decoding reproduces the reference answer and then stops iff, under teacher forcing, the
argmax at every answer position is the next reference token and the argmax after the last answer
token is EOS. One batched forward pass per batch therefore decides what ``generate`` would take
one decoding step per token to decide (tests check the two agree).
"""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa
import torch

from circuitflow.batching import Batches, right_padded
from circuitflow.device import resolve_device
from circuitflow.models.loader import load_model
from circuitflow.tables import read_table, write_table
from circuitflow.token_roles import tokenize_example
from circuitflow.stage import Stage

log = logging.getLogger(__name__)

CLEAN_SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("correct", pa.bool_()),
    ("prompt_token_ids", pa.list_(pa.int32())),
    ("answer_token_ids", pa.list_(pa.int32())),
    ("n_prompt_tokens", pa.int32()),
    ("n_answer_tokens", pa.int32()),
    ("first_wrong_answer_pos", pa.int32()),
    ("predicted_text", pa.string()),
    ("token_roles", pa.list_(pa.string())),
])


@torch.no_grad()
def greedy_answer_predictions(
    model, prompt_ids: list[list[int]], answer_ids: list[list[int]], eos_token_id: int,
    batch_size: int = 64, show_progress: bool = False,
) -> list[list[int]]:
    """Teacher-forced argmax after each of ``prompt[-1], answer[0], ..., answer[-1]``.

    Entry i has ``len(answer_ids[i]) + 1`` tokens: what greedy decoding predicts at each answer
    position given the reference so far, the last one being where EOS should come.
    """
    device = next(model.parameters()).device
    # Similar lengths share a batch so little padding is computed.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(answer_ids[i]))

    def predict(batch: list[int]) -> list[tuple[int, list[int]]]:
        tokens = right_padded([prompt_ids[i] + answer_ids[i] for i in batch], eos_token_id)
        width = tokens.shape[1]
        first_checked = min(len(prompt_ids[i]) for i in batch) - 1
        logits = model(tokens.to(device), logits_to_keep=width - first_checked).logits
        argmax = logits.argmax(-1).cpu()
        starts = [len(prompt_ids[i]) - 1 - first_checked for i in batch]
        return [(i, argmax[row, s : s + len(answer_ids[i]) + 1].tolist())
                for row, (i, s) in enumerate(zip(batch, starts))]

    predictions: list[list[int]] = [[] for _ in prompt_ids]
    for batch in Batches(batch_size).map(order, predict, "teacher forcing", show_progress):
        for i, p in batch:
            predictions[i] = p
    return predictions


def first_wrong_position(predicted: list[int], answer: list[int], eos_token_id: int) -> int | None:
    """Index of the first answer token greedy decoding gets wrong (len(answer) = the EOS)."""
    for pos, (got, want) in enumerate(zip(predicted, answer + [eos_token_id])):
        if got != want:
            return pos
    return None


def first_wrong_positions(
    model, prompt_ids: list[list[int]], answer_ids: list[list[int]], eos_token_id: int,
    batch_size: int = 64, show_progress: bool = False,
) -> list[int | None]:
    """Per example, None when greedy decoding reproduces the answer then EOS, else the index of
    the first wrong answer token (``len(answer)`` when only the EOS is missing)."""
    predictions = greedy_answer_predictions(
        model, prompt_ids, answer_ids, eos_token_id, batch_size, show_progress
    )
    return [first_wrong_position(p, a, eos_token_id) for p, a in zip(predictions, answer_ids)]


def clean_table(examples: pd.DataFrame, model, tokenizer, batch_size: int = 64) -> pd.DataFrame:
    prompts, answers, roles = [], [], []
    for ex in examples.itertuples():
        p, a, r = tokenize_example(tokenizer, ex.prompt, ex.answer, ex.spans)
        prompts.append(p)
        answers.append(a)
        roles.append(r)
    eos = tokenizer.eos_token_id
    predictions = greedy_answer_predictions(model, prompts, answers, eos, batch_size, True)
    rows = []
    for ex_id, p, a, r, pred in zip(examples["example_id"], prompts, answers, roles, predictions):
        wrong = first_wrong_position(pred, a, eos)
        # Greedy output up to and including its first departure from the reference.
        predicted = a if wrong is None else a[:wrong] + pred[wrong : wrong + 1]
        rows.append({
            "example_id": int(ex_id),
            "correct": wrong is None,
            "prompt_token_ids": p,
            "answer_token_ids": a,
            "n_prompt_tokens": len(p),
            "n_answer_tokens": len(a),
            "first_wrong_answer_pos": wrong,
            "predicted_text": tokenizer.decode(predicted),
            "token_roles": r,
        })
    return pd.DataFrame(rows, columns=CLEAN_SCHEMA.names)


def run_stage(params: dict, examples: str, out: str) -> None:
    table = read_table(examples, columns=["example_id", "prompt", "answer", "spans"])
    loaded = load_model(params["model"], resolve_device(params["device"]))
    result = clean_table(table, loaded.model, loaded.tokenizer, params["clean"]["batch_size"])
    log.info("%d of %d examples correct", int(result["correct"].sum()), len(result))
    write_table(result, out, schema=CLEAN_SCHEMA)


STAGE = Stage("clean-accuracy", run_stage, ("examples",), ("out",), reads=("model", "device", "clean.batch_size"))
