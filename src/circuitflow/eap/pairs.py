"""Clean/corrupt prompt pairs for edge attribution patching, one feature at a time.

A pair differs in exactly one word of the prompt: the table or the first field, named either in
the English instruction (ENGTABLENAME, ENGFIELDNAME) or in the CREATE TABLE context
(DEFTABLENAME, DEFFIELDNAME). Both prompts are cut just before the answer token that copies that
word into the SQL, so at the last position the model should say the clean word on the clean
prompt; the EAP metric compares the logits of the clean and the corrupt word there.

Prompts use one fixed, simple CS1 instruction ("Show me the {fields} from the {table} table") for
every command set, with the CREATE TABLE and SQL formatting of ``circuitflow.data.examples``.
Every table and field is written with a leading space in all three parts, so "single token" means
that " word" is one token, and a candidate is kept only when swapping the word swaps exactly that
one token of the prompt and of the SQL (so clean and corrupt have the same length).
"""

from __future__ import annotations

import logging
import random
import re
from typing import Iterator, NamedTuple

import pandas as pd
import pyarrow as pa

from circuitflow.clean import first_wrong_positions
from circuitflow.data import phrasing
from circuitflow.data.examples import (
    FIELD_SYNONYM_P, TABLE_SYNONYM_P,
    create_table_text, english_word, format_prompt, sql_text,
)
from circuitflow.data.vocabulary import FIELDS, FIELDS_BY_NAME, TABLE_NAMES, TABLES, Field
from circuitflow.device import resolve_device
from circuitflow.errors import CircuitflowError
from circuitflow.models.loader import load_model
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

FEATURES = ("ENGTABLENAME", "ENGFIELDNAME", "DEFTABLENAME", "DEFFIELDNAME")
TEMPLATE = "Show me the {fields} from the {table} table"
# Ordinary words that name no table or field (a test checks), for use_novel_names.
NOVEL_WORDS = (
    "hammer", "little", "sky", "river", "apple", "cloud", "garden", "window", "yellow", "happy",
    "stone", "forest", "bread", "candle", "mountain", "ocean", "pencil", "tiger", "violin",
    "winter", "silver", "rabbit", "lemon", "planet", "bridge", "quiet", "castle", "dragon",
    "feather", "blanket",
)
# Candidates drawn per pair wanted before giving up: most are dropped by the token checks or by
# the model getting the clean prompt wrong.
MAX_DRAWS_PER_PAIR = 50


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
    ("batch", pa.int64()),
])


class Candidate(NamedTuple):
    """A pair that passed the token checks; ids of the full clean example for the correctness check."""

    clean_token_ids: list[int]  # prompt + answer up to, not including, the copying token
    corrupt_token_ids: list[int]
    clean_answer_id: int
    corrupt_answer_id: int
    clean_word: str  # the swapped word as the prompt has it (a synonym, possibly)
    corrupt_word: str
    clean_prompt_ids: list[int]
    clean_sql_ids: list[int]


def _texts(english_table: str, english_fields: list[str], table: str, fields: list[Field],
           sql_table: str, sql_fields: list[Field]) -> tuple[str, str]:
    """(prompt, sql) of one version of a pair; each part can name its own table and fields."""
    field_list = "".join(s + w for s, w in zip(phrasing.list_separators(len(fields)), english_fields))
    english = TEMPLATE.format(fields=field_list, table=english_table)
    context = create_table_text(table, fields).text
    return format_prompt(english, context), sql_text(sql_table, sql_fields, [""] * len(sql_fields), []).text


def draw_versions(rng: random.Random, feature: str, num_fields: int, use_novel_names: bool,
                  table_synonym_p: float, field_synonym_p: float):
    """One random clean version and its corrupt version of ``feature``, as (prompt, sql) each;
    (clean word, corrupt word) as the prompts have them; (clean, corrupt) word of the SQL."""
    table = rng.choice(TABLE_NAMES)
    fields = rng.sample(FIELDS, num_fields)
    table_word = english_word(rng, table, TABLES[table], table_synonym_p)
    field_words = [english_word(rng, f.name, f.synonyms, field_synonym_p) for f in fields]
    clean = _texts(table_word, field_words, table, fields, table, fields)

    on_table = feature.endswith("TABLENAME")
    in_english = feature.startswith("ENG")
    used = set(re.findall(r"\w+", "".join(clean)))
    if use_novel_names:
        corrupt_name = rng.choice([w for w in NOVEL_WORDS if w not in used])
    else:
        pool = TABLE_NAMES if on_table else tuple(FIELDS_BY_NAME)
        corrupt_name = rng.choice([n for n in pool if n not in used])
    clean_name = table if on_table else fields[0].name
    clean_word = (table_word if on_table else field_words[0]) if in_english else clean_name
    corrupt_word = corrupt_name
    if in_english and clean_word != clean_name and not use_novel_names:
        # The instruction named the clean table or field by a synonym: name the corrupt one so too.
        synonyms = TABLES[corrupt_name] if on_table else FIELDS_BY_NAME[corrupt_name].synonyms
        corrupt_word = rng.choice(synonyms)

    # The corrupt SQL is what the corrupt prompt asks for: it names the corrupt table or field.
    corrupt_table = corrupt_name if on_table else table
    corrupt_fields = fields if on_table else [fields[0]._replace(name=corrupt_name)] + fields[1:]
    if in_english:
        corrupt = _texts(
            corrupt_word if on_table else table_word,
            field_words if on_table else [corrupt_word] + field_words[1:],
            table, fields, corrupt_table, corrupt_fields,
        )
    else:
        corrupt = _texts(
            table_word, field_words, corrupt_table, corrupt_fields, corrupt_table, corrupt_fields
        )
    return clean, corrupt, (clean_word, corrupt_word), (clean_name, corrupt_name)


def _single_token(tokenizer, word: str) -> int | None:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _only_difference(a: list[int], b: list[int]) -> int | None:
    """The one position where equally long ``a`` and ``b`` differ, else None."""
    if len(a) != len(b):
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return diff[0] if len(diff) == 1 else None


def tokenize_pair(tokenizer, clean, corrupt, words, answer_words) -> Candidate | None:
    """Token ids of a pair cut before the copying token, or None when it breaks a constraint:
    the swapped words and the answer words must each be one token, and swapping them must
    change exactly that one token of the prompt and of the SQL."""
    (clean_prompt, clean_sql), (corrupt_prompt, corrupt_sql) = clean, corrupt
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"]
           for t in (clean_prompt, clean_sql, corrupt_prompt, corrupt_sql)]
    clean_p, clean_a, corrupt_p, corrupt_a = ids
    in_prompt, in_answer = _only_difference(clean_p, corrupt_p), _only_difference(clean_a, corrupt_a)
    if in_prompt is None or in_answer is None:
        return None
    swapped = (_single_token(tokenizer, words[0]), _single_token(tokenizer, words[1]))
    if (clean_p[in_prompt], corrupt_p[in_prompt]) != swapped:
        return None
    copied = (_single_token(tokenizer, answer_words[0]), _single_token(tokenizer, answer_words[1]))
    if (clean_a[in_answer], corrupt_a[in_answer]) != copied:
        return None
    return Candidate(
        clean_token_ids=clean_p + clean_a[:in_answer],
        corrupt_token_ids=corrupt_p + corrupt_a[:in_answer],
        clean_answer_id=clean_a[in_answer],
        corrupt_answer_id=corrupt_a[in_answer],
        clean_word=words[0],
        corrupt_word=words[1],
        clean_prompt_ids=clean_p,
        clean_sql_ids=clean_a,
    )


def draw_candidates(tokenizer, feature: str, eap: dict) -> Iterator[Candidate | None]:
    """Endless random draws seeded by ``eap.seed`` and the feature: a Candidate each, or None
    for a draw that fails the token checks."""
    rng = random.Random(f"{eap['seed']}/{feature}")
    table_p = TABLE_SYNONYM_P if eap["use_synonyms_table"] else 0.0
    field_p = FIELD_SYNONYM_P if eap["use_synonyms_field"] else 0.0
    while True:
        versions = draw_versions(
            rng, feature, eap["num_fields"], eap["use_novel_names"], table_p, field_p
        )
        yield tokenize_pair(tokenizer, *versions)


def make_pairs(model, tokenizer, feature: str, eap: dict, what: str) -> pd.DataFrame:
    """``eap.batch_size × eap.n_batches`` pairs whose clean prompt ``model`` answers correctly,
    in the order drawn from a generator seeded by ``eap.seed`` and the feature; ``what`` names
    the model, command set and feature in errors."""
    if feature not in FEATURES:
        raise CircuitflowError(
            f"{what}: unknown feature {feature!r}; expected one of {', '.join(FEATURES)}"
        )
    needed = eap["batch_size"] * eap["n_batches"]
    max_draws = MAX_DRAWS_PER_PAIR * needed
    stream = draw_candidates(tokenizer, feature, eap)
    kept: list[Candidate] = []
    drawn = valid = 0
    while len(kept) < needed and drawn < max_draws:
        chunk = []
        while len(chunk) < needed and drawn < max_draws:
            drawn += 1
            candidate = next(stream)
            if candidate is not None:
                chunk.append(candidate)
        valid += len(chunk)
        # Correct means greedy decoding writes the whole clean SQL, then stops.
        wrong = first_wrong_positions(
            model, [c.clean_prompt_ids for c in chunk], [c.clean_sql_ids for c in chunk],
            tokenizer.eos_token_id, eap["batch_size"],
        )
        kept += [c for c, w in zip(chunk, wrong) if w is None]
    log.info(
        "%s: %d draws, %d passed the token checks, %d answered correctly",
        what, drawn, valid, len(kept),
    )
    if len(kept) < needed:
        # The built-in model's tokenizer, trained on TinySQL text only, splits every novel word.
        split = (
            "the novel words (eap.use_novel_names)" if eap["use_novel_names"]
            else "table and field names"
        )
        hint = (
            f"This tokenizer splits {split} into several tokens."
            if valid == 0 else
            "Lower eap.batch_size or eap.n_batches, or use a model trained for this command set."
        )
        raise CircuitflowError(
            f"{what}: found only {len(kept)} of the {needed} pairs needed (eap.batch_size x "
            f"eap.n_batches) in {drawn} random draws: {valid} passed the token checks (swapped "
            f"words single tokens, equal lengths) and the model answered {len(kept)} of their "
            f"clean prompts correctly. {hint}"
        )
    kept = kept[:needed]
    return pd.DataFrame(
        [
            {
                "pair_id": i,
                "clean_prompt": tokenizer.decode(c.clean_token_ids),
                "corrupt_prompt": tokenizer.decode(c.corrupt_token_ids),
                "clean_token_ids": c.clean_token_ids,
                "corrupt_token_ids": c.corrupt_token_ids,
                "clean_answer_id": c.clean_answer_id,
                "corrupt_answer_id": c.corrupt_answer_id,
                "clean_word": c.clean_word,
                "corrupt_word": c.corrupt_word,
                "batch": i // eap["batch_size"],
            }
            for i, c in enumerate(kept)
        ],
        columns=PAIRS_SCHEMA.names,
    )


def run_stage(params: dict, out: str) -> None:
    loaded = load_model(params["model"], resolve_device(params["device"]))
    what = f"{loaded.name}, command set {params['command_set']}, feature {params['feature']}"
    pairs = make_pairs(loaded.model, loaded.tokenizer, params["feature"], params["eap"], what)
    log.info("%s: %d pairs in %d batches", what, len(pairs), params["eap"]["n_batches"])
    write_table(pairs, out, schema=PAIRS_SCHEMA)
