"""Token roles by span overlap, written apart from circuitflow.token_roles, to check a task's spans."""


def roles_by_overlap(tok, prompt: str, answer: str, spans) -> list[str]:
    """One role per token of prompt + answer, each tokenized on its own: the first span a token's
    characters overlap (a token that overlaps none fails the test)."""
    offsets = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    shifted = tok(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    offsets = list(offsets) + [(s + len(prompt), e + len(prompt)) for s, e in shifted]
    roles = []
    for start, end in offsets:
        hits = [sp["role"] for sp in spans if max(start, sp["start"]) < min(end, sp["end"])]
        assert hits, f"token at {start}:{end} overlaps no span"
        roles.append(hits[0])
    return roles
