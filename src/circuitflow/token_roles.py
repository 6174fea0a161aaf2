"""Token ids of an example and one role label per token.

An example's ``spans`` are character spans of ``prompt + answer``, each with a role, in the order
of precedence its task gives them (specific pieces first, then the parts they lie in), covering
every character. A token takes the role of the first span that overlaps its visible characters:
a byte-level token such as " ###" belongs where its "###" is, not where its leading space is. A
token without characters (empty offsets) takes the last span that holds its position: the part
it stands in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

UNCOVERED = "other"  # a token no span reaches (a task whose spans leave gaps)


def _visible(start: int, end: int, text: str) -> tuple[int, int]:
    """The token's characters without surrounding whitespace (all of them if it is only that)."""
    stripped = text[start:end].strip()
    if not stripped:
        return start, end
    first = start + text[start:end].index(stripped)
    return first, first + len(stripped)


def _role(start: int, end: int, text: str, spans: list[Mapping]) -> str:
    if start == end:
        # No characters (a byte-level lone space, trimmed): the part it stands in, the last
        # span holding its position, not the piece that follows it.
        position = min(start, len(text) - 1)
        holding = [s for s in spans if s["start"] <= position < s["end"]]
        return holding[-1]["role"] if holding else UNCOVERED
    start, end = _visible(start, end, text)
    for span in spans:
        if max(start, span["start"]) < min(end, span["end"]):
            return span["role"]
    return UNCOVERED


def tokenize_example(
    tokenizer, prompt: str, answer: str, spans: Iterable[Mapping]
) -> tuple[list[int], list[int], list[str]]:
    """Tokenize prompt and answer separately; return their ids and one role per token of both."""
    encoded_prompt = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    encoded_answer = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded_prompt["offset_mapping"]] + [
        (start + len(prompt), end + len(prompt)) for start, end in encoded_answer["offset_mapping"]
    ]
    text = prompt + answer
    spans = list(spans)
    roles = [_role(start, end, text, spans) for start, end in offsets]
    return list(encoded_prompt["input_ids"]), list(encoded_answer["input_ids"]), roles
