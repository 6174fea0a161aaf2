"""Token ids of an example and one role label per token.

A token takes the role of the first span (``eng_field_1``, ``def_table``, ...) its characters
overlap; any other token is labelled by the part of the prompt it lies in: ``template`` (the
markers ``### Instruction:`` etc.), ``instruction``, ``context`` or ``response`` (the SQL, and the
space that ends the prompt).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from circuitflow.data.examples import CONTEXT_MARKER, INSTRUCTION_MARKER, RESPONSE_MARKER


def _sections(prompt: str, total_length: int) -> list[tuple[int, int, str]]:
    """(start, end, label) of each part of ``prompt + sql``."""
    i = prompt.find(INSTRUCTION_MARKER)
    c = prompt.find(CONTEXT_MARKER, max(i, 0))
    r = prompt.find(RESPONSE_MARKER, max(c, 0))
    if min(i, c, r) < 0:
        raise ValueError(
            f"prompt lacks {INSTRUCTION_MARKER!r}, {CONTEXT_MARKER!r} or {RESPONSE_MARKER!r}"
            f" (in this order): {prompt!r}"
        )
    i_end = i + len(INSTRUCTION_MARKER)
    c_end = c + len(CONTEXT_MARKER)
    r_end = r + len(RESPONSE_MARKER)
    return [
        (i, i_end, "template"),
        (i_end, c, "instruction"),
        (c, c_end, "template"),
        (c_end, r, "context"),
        (r, r_end, "template"),
        (r_end, total_length, "response"),
    ]


def _section_of(position: int, sections: list[tuple[int, int, str]]) -> str:
    for start, end, label in sections:
        if start <= position < end:
            return label
    return "template"  # text before the first marker: there is none in generated prompts


def _role(start: int, end: int, text: str, spans: list[Mapping], sections) -> str:
    for span in spans:
        if max(start, span["start"]) < min(end, span["end"]):
            return span["role"]
    # A token such as " ###" starts with the space that ends the previous part: place it by its
    # first visible character. A token with empty offsets is placed where it stands.
    visible = next((p for p in range(start, end) if not text[p].isspace()), start)
    return _section_of(min(visible, len(text) - 1), sections)


def tokenize_example(
    tokenizer, prompt: str, sql: str, spans: Iterable[Mapping]
) -> tuple[list[int], list[int], list[str]]:
    """Tokenize prompt and SQL separately; return their ids and one role per token of both."""
    encoded_prompt = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    encoded_sql = tokenizer(sql, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded_prompt["offset_mapping"]] + [
        (start + len(prompt), end + len(prompt)) for start, end in encoded_sql["offset_mapping"]
    ]
    text = prompt + sql
    spans = list(spans)
    sections = _sections(prompt, len(text))
    roles = [_role(start, end, text, spans, sections) for start, end in offsets]
    return list(encoded_prompt["input_ids"]), list(encoded_sql["input_ids"]), roles
