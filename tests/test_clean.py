"""Teacher-forced clean accuracy must decide exactly what greedy ``generate`` decides."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitflow.clean import first_wrong_positions


def greedy_generate(model, prompt, n_new, eos):
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n_new, do_sample=False, eos_token_id=eos, pad_token_id=eos,
    )
    return out[0, len(prompt):].tolist()


def reference_first_wrong(model, prompt, answer, eos):
    """What greedy decoding does, token by token: the first place it leaves answer + [EOS]."""
    produced = greedy_generate(model, prompt, len(answer) + 1, eos)
    for pos, want in enumerate(answer + [eos]):
        if pos >= len(produced) or produced[pos] != want:
            return pos
    return None


def make_cases(model, vocab_size, n_cases, seed):
    """Prompts with answers that greedy decoding gets right, wrong in the middle, wrong only at
    the end, or wrong at once; EOS is chosen per case so that right answers really end."""
    rng = random.Random(seed)
    cases = []
    for i in range(n_cases):
        prompt = [rng.randrange(1, vocab_size) for _ in range(rng.randint(3, 12))]
        continuation = greedy_generate(model, prompt, 8, eos=vocab_size + 1)  # never stops
        # The answer ends where the next token is new to it, so that token can serve as EOS.
        ends = [k for k in range(1, 8) if continuation[k] not in continuation[:k]]
        if not ends:
            continue
        k = rng.choice(ends)
        answer, eos = continuation[:k], continuation[k]
        kind = i % 4
        if kind == 1:
            j = rng.randrange(k)
            answer = answer[:j] + [(answer[j] + 1) % vocab_size] + answer[j + 1:]
        elif kind == 2:
            eos = (eos + 1) % vocab_size
        elif kind == 3:
            answer = [rng.randrange(vocab_size) for _ in range(k)]
        if eos in answer:  # generate would stop early at an EOS inside the answer
            continue
        cases.append((prompt, answer, eos))
    return cases


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_teacher_forcing_equals_greedy_generate(tiny_model_dir, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
    cases = make_cases(model, model.config.vocab_size, 24, seed=1)
    expected = [reference_first_wrong(model, p, a, e) for p, a, e in cases]
    # Grouped by EOS id, since one call shares an EOS; batch sizes force padding and splits.
    got = {}
    for eos in {e for _, _, e in cases}:
        idx = [i for i, c in enumerate(cases) if c[2] == eos]
        wrong = first_wrong_positions(
            model, [cases[i][0] for i in idx], [cases[i][1] for i in idx], eos, batch_size=3
        )
        got.update(zip(idx, wrong))
    assert [got[i] for i in range(len(cases))] == expected
    assert any(w is None for w in expected) and any(w is not None for w in expected)
