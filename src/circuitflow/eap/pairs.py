"""Stage corrupt-pairs: clean/corrupt prompt pairs of one feature of a dataset, as token ids.

The dataset's task draws pairs of texts that differ in that feature (``circuitflow.tasks``).
Here they are tokenized like every example (prompt and answer apart) and cut just before the
first answer token where clean and corrupt differ, so that at the last position the model should
say the clean token on the clean prompt; the metric compares the clean and corrupt tokens there.
A pair is kept when clean and corrupt prompts have the same number of tokens (so positions
align), differ in at least one of them, share the answer before the cut, and the model answers
the clean prompt exactly (the whole answer, then EOS).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import pandas as pd
import pyarrow as pa

from circuitflow.clean import first_wrong_positions
from circuitflow.device import resolve_device
from circuitflow.errors import CircuitflowError
from circuitflow.models.loader import load_model
from circuitflow.stage import Stage
from circuitflow.tables import write_table
from circuitflow.tasks import task_of
from circuitflow.token_roles import tokenize_example

log = logging.getLogger(__name__)

# Candidates drawn per pair wanted before giving up: many are dropped by the token checks or by
# the model getting the clean prompt wrong.
MAX_DRAWS_PER_PAIR = 20

PAIRS_SCHEMA = pa.schema([
    ("pair_id", pa.int64()),
    ("clean_prompt", pa.string()),
    ("corrupt_prompt", pa.string()),
    ("clean_token_ids", pa.list_(pa.int32())),
    ("corrupt_token_ids", pa.list_(pa.int32())),
    ("clean_answer_id", pa.int32()),
    ("corrupt_answer_id", pa.int32()),
    ("clean_word", pa.string()),
    ("corrupt_word", pa.string()),
    ("token_roles", pa.list_(pa.string())),
    ("batch", pa.int64()),
])


class Candidate(NamedTuple):
    clean_token_ids: list[int]  # prompt + answer up to, not including, the first differing token
    corrupt_token_ids: list[int]
    clean_answer_id: int
    corrupt_answer_id: int
    clean_word: str  # what the task changed, or else the prompt tokens that differ, decoded
    corrupt_word: str
    token_roles: list[str]  # of the clean tokens kept
    clean_prompt_ids: list[int]  # the whole clean example, for the correctness check
    clean_answer_ids: list[int]


def tokenize_pair(tokenizer, row) -> Candidate | str:
    """The token ids of one drawn pair, cut before the first differing answer token, or the
    constraint it breaks (see the module's docstring)."""
    clean_p, clean_a, roles = tokenize_example(
        tokenizer, row.clean_prompt, row.clean_answer, getattr(row, "spans", None) or []
    )
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    corrupt_p, corrupt_a = encode(row.corrupt_prompt), encode(row.corrupt_answer)
    if len(clean_p) != len(corrupt_p):
        return (
            f"the corrupt prompt has {len(corrupt_p)} tokens, the clean one {len(clean_p)}: "
            "they must be equally long"
        )
    changed = [i for i, (a, b) in enumerate(zip(clean_p, corrupt_p)) if a != b]
    if not changed:
        return "the corrupt prompt tokenizes like the clean one"
    cut = next((i for i, (a, b) in enumerate(zip(clean_a, corrupt_a)) if a != b), None)
    if cut is None:
        return "the corrupt answer starts with the whole clean answer"
    return Candidate(
        clean_token_ids=clean_p + clean_a[:cut],
        corrupt_token_ids=corrupt_p + corrupt_a[:cut],
        clean_answer_id=clean_a[cut],
        corrupt_answer_id=corrupt_a[cut],
        clean_word=getattr(row, "clean_word", None) or tokenizer.decode([clean_p[i] for i in changed]).strip(),
        corrupt_word=getattr(row, "corrupt_word", None) or tokenizer.decode([corrupt_p[i] for i in changed]).strip(),
        token_roles=roles[: len(clean_p) + cut],
        clean_prompt_ids=clean_p,
        clean_answer_ids=clean_a,
    )


def make_pairs(model, tokenizer, dataset: dict, feature: str, eap, what: str) -> pd.DataFrame:
    """``eap.batch_size × eap.n_batches`` pairs whose clean prompt ``model`` answers correctly,
    in the order the task draws them (seeded by ``eap.seed``); ``what`` names the job in errors."""
    task = task_of(dataset)
    if feature not in task.FEATURES:
        raise CircuitflowError(
            f"{what}: task {dataset['task']} has no feature {feature!r}; it has "
            f"{', '.join(task.FEATURES)}"
        )
    needed = eap["batch_size"] * eap["n_batches"]
    drawn = task.pairs(dataset, feature, MAX_DRAWS_PER_PAIR * needed, eap["seed"])
    candidates = [tokenize_pair(tokenizer, row) for row in drawn.itertuples()]
    if task.PAIRS_GIVEN:
        for row, candidate in zip(drawn["source_row"], candidates):
            if isinstance(candidate, str):
                raise CircuitflowError(f"{what}: the pair in row {row}: {candidate}")
    valid = [c for c in candidates if isinstance(c, Candidate)]
    kept: list[Candidate] = []
    for start in range(0, len(valid), needed):
        chunk = valid[start : start + needed]
        # Correct means greedy decoding writes the whole clean answer, then stops.
        wrong = first_wrong_positions(
            model, [c.clean_prompt_ids for c in chunk], [c.clean_answer_ids for c in chunk],
            tokenizer.eos_token_id, eap["batch_size"],
        )
        kept += [c for c, w in zip(chunk, wrong) if w is None]
        if len(kept) >= needed:
            break
    log.info(
        "%s: %d drawn, %d passed the token checks, %d answered correctly",
        what, len(drawn), len(valid), len(kept),
    )
    if len(kept) < needed:
        hint = (
            "This tokenizer splits the changed words into a different number of tokens."
            if not valid else
            "Lower eap.batch_size or eap.n_batches, or use a model trained on this dataset."
        )
        raise CircuitflowError(
            f"{what}: found only {len(kept)} of the {needed} pairs needed (eap.batch_size x "
            f"eap.n_batches) in {len(drawn)} draws: {len(valid)} passed the token checks "
            f"(prompts of equal length, answers that differ) and the model answered "
            f"{len(kept)} of their clean prompts correctly. {hint}"
        )
    rows = []
    for i, c in enumerate(kept[:needed]):
        rows.append({
            "pair_id": i,
            "clean_prompt": tokenizer.decode(c.clean_token_ids),
            "corrupt_prompt": tokenizer.decode(c.corrupt_token_ids),
            **{k: getattr(c, k) for k in PAIRS_SCHEMA.names if hasattr(c, k)},
            "batch": i // eap["batch_size"],
        })
    return pd.DataFrame(rows, columns=PAIRS_SCHEMA.names)


def run_stage(params, out: str) -> None:
    loaded = load_model(params["model"], resolve_device(params["device"]))
    dataset = params["dataset"]
    what = f"{loaded.name}, dataset {dataset['name']}, feature {params['feature']}"
    pairs = make_pairs(loaded.model, loaded.tokenizer, dataset, params["feature"], params["eap"], what)
    log.info("%s: %d pairs in %d batches", what, len(pairs), params["eap"]["n_batches"])
    write_table(pairs, out, schema=PAIRS_SCHEMA)


STAGE = Stage(
    "corrupt-pairs", run_stage, (), ("out",),
    reads=("model", "device", "dataset", "eap.seed", "eap.batch_size", "eap.n_batches"),
    job=("feature",),
)
