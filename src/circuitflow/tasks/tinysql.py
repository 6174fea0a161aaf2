"""TinySQL (seeds 000, 001): an English request and a CREATE TABLE context answered by SQL.

Examples come from ``circuitflow.data.examples`` (command sets CS1-CS5); their named spans come
first, then the parts of the prompt they lie in (``template`` for the ``### ...:`` markers,
``instruction``, ``context``, ``response`` for the SQL and the space that ends the prompt).

Corrupt pairs change one name: the table or the first selected field, in the English instruction
(ENGTABLENAME, ENGFIELDNAME) or in the CREATE TABLE context (DEFTABLENAME, DEFFIELDNAME). The
corrupt SQL is what the corrupt prompt asks for: it names the corrupt table or field wherever the
clean one names the clean name. With ``pair_template: own`` the pairs are the command set's own
examples (CS2 prompts keep their ORDER BY, CS3 their aggregates); ``cs1`` is the notebook's single
instruction, "Show me the {fields} from the {table} table", for every command set.

Classes (``classes: order_direction``): the direction of the first ORDER BY column (ASC / DESC),
about the SQL token that writes it (``sql_order_dir_1``); CS2 and above (in CS4 and CS5 only the
examples with an ORDER BY have a class).
"""

from __future__ import annotations

import random
import re

import pandas as pd

from circuitflow.data import phrasing
from circuitflow.data.examples import (
    COMMAND_SETS, CONTEXT_MARKER, FIELD_SYNONYM_P, INSTRUCTION_MARKER, RESPONSE_MARKER,
    SCHEMA, TABLE_SYNONYM_P, create_table_text, english_word, format_prompt, generate_examples, sql_text,
)
from circuitflow.data.vocabulary import FIELDS, FIELDS_BY_NAME, TABLE_NAMES, TABLES
from circuitflow.errors import ConfigError, OptionError
from circuitflow.models.tokenizer import train_tokenizer

OPTIONS = {
    "command_set": {"enum": list(COMMAND_SETS), "default": "cs1",
                    "description": "CS1 SELECT, CS2 + ORDER BY, CS3 + aggregates, CS4 + WHERE, CS5 + JOIN"},
    "min_cols": {"type": "integer", "minimum": 1, "maximum": 12, "default": 2,
                 "description": "fewest CREATE TABLE columns"},
    "max_cols": {"type": "integer", "minimum": 1, "maximum": 12, "default": 4,
                 "description": "most CREATE TABLE columns"},
    "use_synonyms_table": {"type": "boolean", "default": False,
                           "description": "the instruction may name the table by a synonym"},
    "use_synonyms_field": {"type": "boolean", "default": False,
                           "description": "the instruction may name fields by synonyms"},
    "pair_template": {"enum": ["own", "cs1"], "default": "own",
                      "description": "corrupt pairs from the command set's own examples, or the notebook's one CS1 instruction"},
    "use_novel_names": {"type": "boolean", "default": False,
                        "description": "corrupt with words like 'hammer' instead of other table/field names"},
    "classes": {"enum": ["none", "order_direction"], "default": "none",
                "description": "class label of each example (order_direction: CS2 and above)"},
}
FEATURES = ("ENGTABLENAME", "ENGFIELDNAME", "DEFTABLENAME", "DEFFIELDNAME")
PAIRS_GIVEN = False
COLUMNS = [f for f in SCHEMA if f.name not in ("example_id", "prompt", "sql", "spans")]
# n_ctx: CS5 prompts with their SQL reach about 280 tokens of a 2048-token BPE (the default
# column counts), more with more columns.
# Batches of 128 reach 98% where batches of 64 ended at 90% on CS3 after 3,000 steps; initial
# weights of std 0.1 (about 1/sqrt(d_model)) instead of GPT-2's 0.02, tuned for a width of 768,
# reached 98% on every command set at step 1,250 instead of 1,750 (docs/benchmarks.md), so the
# cosine schedule ends at 1,500. Micro-batches of 16, because prompts run from 40 to 135 tokens
# and a batch sorted by length and cut into pieces pads ~35% fewer tokens.
MODEL = {
    "n_layers": 3, "n_heads": 4, "d_model": 64, "n_ctx": 384, "vocab_size": 2048,
    "batch_size": 128, "micro_batch_size": 16, "init_std": 0.1, "max_steps": 1500,
    "early_stop_accuracy": 0.98,
}
CS1_TEMPLATE = "Show me the {fields} from the {table} table"
# Ordinary words that name no table or field (a test checks), for use_novel_names.
NOVEL_WORDS = (
    "hammer", "little", "sky", "river", "apple", "cloud", "garden", "window", "yellow", "happy",
    "stone", "forest", "bread", "candle", "mountain", "ocean", "pencil", "tiger", "violin",
    "winter", "silver", "rabbit", "lemon", "planet", "bridge", "quiet", "castle", "dragon",
    "feather", "blanket",
)


def section_spans(prompt: str, total_length: int) -> list[dict]:
    """The parts of ``prompt + answer``, after the named spans in precedence."""
    i = prompt.find(INSTRUCTION_MARKER)
    c = prompt.find(CONTEXT_MARKER, max(i, 0))
    r = prompt.find(RESPONSE_MARKER, max(c, 0))
    if min(i, c, r) < 0:
        raise ValueError(f"prompt lacks the ### markers in order: {prompt!r}")
    bounds = [
        (0, i + len(INSTRUCTION_MARKER), "template"), (i + len(INSTRUCTION_MARKER), c, "instruction"),
        (c, c + len(CONTEXT_MARKER), "template"), (c + len(CONTEXT_MARKER), r, "context"),
        (r, r + len(RESPONSE_MARKER), "template"), (r + len(RESPONSE_MARKER), total_length, "response"),
    ]
    return [{"role": role, "start": s, "end": e} for s, e, role in bounds]


def settings(options: dict) -> dict:
    """The options with their defaults, checked together."""
    settings = {name: spec["default"] for name, spec in OPTIONS.items()} | dict(options)
    if settings["min_cols"] > settings["max_cols"]:
        raise OptionError(
            "min_cols", f"{settings['min_cols']} is larger than 'max_cols' ({settings['max_cols']})"
        )
    if settings["classes"] == "order_direction" and settings["command_set"] == "cs1":
        raise OptionError("classes", "order_direction needs ORDER BY, so command set cs2 or above")
    return settings


def _generate(options: dict, n: int, seed: int) -> pd.DataFrame:
    options = settings(options)
    return generate_examples(
        options["command_set"], n_examples=n, seed=seed, min_cols=options["min_cols"],
        max_cols=options["max_cols"], use_synonyms_table=options["use_synonyms_table"],
        use_synonyms_field=options["use_synonyms_field"],
    )


def has_classes(options: dict) -> bool:
    return options["classes"] != "none"


def _order_direction(example) -> tuple[str | None, str | None]:
    if len(example.order_by) == 0:
        return None, None
    return example.order_by[0]["direction"], "sql_order_dir_1"


def examples(options: dict, n: int, seed: int) -> pd.DataFrame:
    options = settings(options)
    table = _generate(options, n, seed).rename(columns={"sql": "answer"})
    table["spans"] = [
        list(spans) + section_spans(prompt, len(prompt) + len(answer))
        for prompt, answer, spans in zip(table["prompt"], table["answer"], table["spans"])
    ]
    labels = (
        [_order_direction(ex) for ex in table.itertuples()]
        if options["classes"] == "order_direction" else [(None, None)] * len(table)
    )
    table["class"] = [c for c, _ in labels]
    table["class_role"] = [r for _, r in labels]
    return table


def tokenizer(options: dict, texts, vocab_size: int):
    """Byte-level BPE learned from the training texts."""
    return train_tokenizer(texts, vocab_size)


# --- corrupt pairs ------------------------------------------------------------------------------

def _replace_span(text: str, span: dict, word: str, shift: int) -> tuple[str, int]:
    start, end = span["start"] + shift, span["end"] + shift
    return text[:start] + word + text[end:], shift + len(word) - (end - start)


def _replace_name(sql: str, old: str, new: str) -> str:
    """``old`` replaced wherever the SQL names it, aliases such as ``MAX_old`` too."""
    return re.sub(rf"(?<!\w)([A-Z]+_)?{re.escape(old)}(?!\w)", lambda m: (m[1] or "") + new, sql)


def _corrupt_name(rng: random.Random, on_table: bool, used: set[str], novel: bool) -> str:
    if novel:
        pool = NOVEL_WORDS
    else:
        pool = TABLE_NAMES if on_table else tuple(FIELDS_BY_NAME)
    return rng.choice([name for name in pool if name not in used])


def _own_pair(rng: random.Random, example, feature: str, options: dict) -> dict:
    """One example of the command set, and the same with one name changed."""
    on_table = feature.endswith("TABLENAME")
    in_english = feature.startswith("ENG")
    prompt, answer = example.prompt, example.answer
    spans = list(example.spans)
    clean_name = example.table if on_table else example.selected_fields[0]
    used = set(re.findall(r"\w+", prompt + answer))
    corrupt_name = _corrupt_name(rng, on_table, used, options["use_novel_names"])
    if in_english:
        wanted = {"eng_table"} if on_table else {"eng_field_1"}
        clean_word = next(prompt[s["start"]:s["end"]] for s in spans if s["role"] in wanted)
        corrupt_word = corrupt_name
        if clean_word != clean_name and not options["use_novel_names"]:
            # The instruction named it by a synonym: name the corrupt one so too.
            synonyms = TABLES[corrupt_name] if on_table else FIELDS_BY_NAME[corrupt_name].synonyms
            corrupt_word = rng.choice(synonyms)
        # The same word where the instruction orders or filters by the field too.
        also = ("eng_order_field", "eng_where_field")
        chosen = [s for s in spans if s["end"] <= len(prompt)
                  and prompt[s["start"]:s["end"]] == clean_word
                  and (s["role"] in wanted or not on_table and s["role"].startswith(also))]
    else:
        wanted = "def_table" if on_table else None
        chosen = [s for s in spans if s["end"] <= len(prompt) and (
            s["role"] == wanted if on_table else
            s["role"].startswith("def_field") and prompt[s["start"]:s["end"]] == clean_name)][:1]
        clean_word, corrupt_word = clean_name, corrupt_name
    corrupt_prompt, shift = prompt, 0
    for span in sorted(chosen, key=lambda s: s["start"]):
        corrupt_prompt, shift = _replace_span(corrupt_prompt, span, corrupt_word, shift)
    return {
        "clean_prompt": prompt, "clean_answer": answer, "corrupt_prompt": corrupt_prompt,
        "corrupt_answer": _replace_name(answer, clean_name, corrupt_name),
        "clean_word": clean_word, "corrupt_word": corrupt_word, "spans": spans,
    }


def _template_texts(english_table, english_fields, table, fields, sql_table, sql_fields):
    field_list = "".join(
        s + w for s, w in zip(phrasing.list_separators(len(fields)), english_fields)
    )
    english = CS1_TEMPLATE.format(fields=field_list, table=english_table)
    prompt = format_prompt(english, create_table_text(table, fields).text)
    return prompt, sql_text(sql_table, sql_fields, [""] * len(sql_fields), []).text


def _template_pair(rng: random.Random, feature: str, options: dict) -> dict:
    """The notebook's pairs: one fixed CS1 instruction over two random fields."""
    table_p = TABLE_SYNONYM_P if options["use_synonyms_table"] else 0.0
    field_p = FIELD_SYNONYM_P if options["use_synonyms_field"] else 0.0
    table = rng.choice(TABLE_NAMES)
    fields = rng.sample(FIELDS, 2)
    table_word = english_word(rng, table, TABLES[table], table_p)
    field_words = [english_word(rng, f.name, f.synonyms, field_p) for f in fields]
    clean = _template_texts(table_word, field_words, table, fields, table, fields)

    on_table = feature.endswith("TABLENAME")
    in_english = feature.startswith("ENG")
    corrupt_name = _corrupt_name(
        rng, on_table, set(re.findall(r"\w+", "".join(clean))), options["use_novel_names"]
    )
    clean_name = table if on_table else fields[0].name
    clean_word = (table_word if on_table else field_words[0]) if in_english else clean_name
    corrupt_word = corrupt_name
    if in_english and clean_word != clean_name and not options["use_novel_names"]:
        synonyms = TABLES[corrupt_name] if on_table else FIELDS_BY_NAME[corrupt_name].synonyms
        corrupt_word = rng.choice(synonyms)
    corrupt_table = corrupt_name if on_table else table
    corrupt_fields = fields if on_table else [fields[0]._replace(name=corrupt_name)] + fields[1:]
    if in_english:
        corrupt = _template_texts(
            corrupt_word if on_table else table_word,
            field_words if on_table else [corrupt_word] + field_words[1:],
            table, fields, corrupt_table, corrupt_fields,
        )
    else:
        corrupt = _template_texts(
            table_word, field_words, corrupt_table, corrupt_fields, corrupt_table, corrupt_fields
        )
    return {
        "clean_prompt": clean[0], "clean_answer": clean[1],
        "corrupt_prompt": corrupt[0], "corrupt_answer": corrupt[1],
        "clean_word": clean_word, "corrupt_word": corrupt_word,
        "spans": section_spans(clean[0], len(clean[0]) + len(clean[1])),
    }


def pairs(options: dict, feature: str, n: int, seed: int) -> pd.DataFrame:
    if feature not in FEATURES:
        raise ConfigError(f"tinysql feature {feature!r}: expected one of {', '.join(FEATURES)}")
    rng = random.Random(f"tinysql/pairs/{feature}/{seed}")
    if options["pair_template"] == "cs1":
        rows = [_template_pair(rng, feature, options) for _ in range(n)]
    else:
        source = examples({**options, "classes": "none"}, n, seed)
        rows = [_own_pair(rng, ex, feature, options) for ex in source.itertuples()]
    return pd.DataFrame(rows)
