"""The model loader on tiny saved models of every supported architecture.

A saved directory passed as the hub ``id`` goes through exactly the code a real hub id takes
(``from_pretrained`` accepts both), which is how the hub path is tested without a hub.
"""

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, ViTConfig

from circuitflow.errors import ModelLoadError
from circuitflow.models.loader import load_model
from conftest import ARCHITECTURES
from tiny_models import CORPUS

TEXTS = CORPUS + [
    "  spaces   and\n\ttabs, don't it's 1234567 a1b2",
    "unicode: ÄÖü 日本 😀",
    "specials inline: x<|endoftext|>y",
]


def specs(directory):
    return {
        "hub": {"source": "hub", "id": str(directory)},
        "local": {"source": "local", "path": str(directory)},
    }


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("source", ["hub", "local"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_model_and_tokenizer_as_saved(tiny_model_dir, arch, source):
    directory = tiny_model_dir(arch)
    loaded = load_model(specs(directory)[source])
    model, tokenizer = loaded.model, loaded.tokenizer
    assert str(directory) in loaded.name
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.is_fast
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None

    saved = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == saved.encode(text, add_special_tokens=False).ids, text
    offsets = tokenizer(TEXTS[0], return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(saved.encode(TEXTS[0]).ids)

    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = saved.encode(TEXTS[0]).ids
    assert torch.equal(logits(model, ids), logits(reference, ids))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpoint_with_an_added_token(tiny_model_dir, arch):
    """Like the BM1 fine-tunes: one added pad token with its own embedding row."""
    directory = tiny_model_dir(arch, extra_tokens=1)
    loaded = load_model({"source": "hub", "id": str(directory)})
    model, tokenizer = loaded.model, loaded.tokenizer
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 401
    added = tokenizer.convert_tokens_to_ids("<|extra_0|>")
    assert added == 400 and tokenizer.pad_token_id == added

    ids = tokenizer("SELECT name FROM orders<|extra_0|>", add_special_tokens=False)["input_ids"]
    assert added in ids
    out = logits(model, ids)
    assert out.shape == (1, len(ids), 401)
    assert torch.isfinite(out[..., added]).all()


def test_tokenizer_larger_than_embeddings_is_refused(tiny_model_dir, tmp_path):
    directory = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir("gpt2", extra_tokens=1) / name, directory / name)
    expected = "401 tokens but the model has only 400 embedding rows"
    with pytest.raises(ModelLoadError, match=expected):
        load_model({"source": "local", "path": str(directory)})


def test_missing_special_tokens_are_filled_in(tiny_model_dir, tmp_path):
    """EOS comes from config.json when the tokenizer lacks one; padding falls back to EOS."""
    directory = tmp_path / "no_specials"
    shutil.copytree(tiny_model_dir("llama"), directory)
    removed = {"tokenizer_config.json": ["eos_token", "pad_token"], "config.json": ["pad_token_id"]}
    for name, keys in removed.items():
        settings = json.loads((directory / name).read_text())
        for key in keys:
            del settings[key]
        (directory / name).write_text(json.dumps(settings))
    loaded = load_model({"source": "local", "path": str(directory)})
    assert loaded.tokenizer.eos_token == "<|endoftext|>"
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id == 0
    assert loaded.model.config.pad_token_id == 0


def test_vocabulary_files_without_tokenizer_json(tiny_model_dir, tmp_path):
    """Older checkpoints ship only vocab.json and merges.txt: the model's own tokenizer class
    rebuilds the tokenizer."""
    source = tiny_model_dir("gpt2")
    directory = tmp_path / "vocab_files"
    shutil.copytree(source, directory)
    saved = Tokenizer.from_file(str(source / "tokenizer.json"))
    saved.model.save(str(directory))  # vocab.json, merges.txt
    (directory / "tokenizer.json").unlink()
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "GPT2Tokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))

    tokenizer = load_model({"source": "local", "path": str(directory)}).tokenizer
    assert tokenizer.is_fast
    for text in TEXTS[:-1]:  # the added special token is not in the vocabulary files
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == saved.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize("source", ["local", "builtin"])
def test_missing_directory(tmp_path, source):
    missing = tmp_path / "not_there"
    with pytest.raises(ModelLoadError) as caught:
        load_model({"source": source, "path": str(missing)})
    message = str(caught.value)
    assert str(missing) in message and "directory not found" in message
    assert ("train_model" if source == "builtin" else "download") in message


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json in .*save_pretrained"):
        load_model({"source": "local", "path": str(tmp_path)})


def test_directory_without_weights(tiny_model_dir, tmp_path):
    directory = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    (directory / "model.safetensors").unlink()
    expected = r"no_weights.*complete model.*save_pretrained.*no file named model\.safetensors"
    with pytest.raises(ModelLoadError, match=expected):
        load_model({"source": "hub", "id": str(directory)})


def test_weights_missing_from_checkpoint(tiny_model_dir, tmp_path):
    """transformers would initialise a missing weight at random and carry on."""
    directory = tmp_path / "incomplete"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    weights = load_file(directory / "model.safetensors")
    del weights["transformer.ln_f.weight"]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    expected = r"lacks 1 weights of its architecture \(transformer\.ln_f\.weight\)"
    with pytest.raises(ModelLoadError, match=expected):
        load_model({"source": "local", "path": str(directory)})


def test_not_a_causal_lm(tmp_path):
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="'vit' is not a causal language model"):
        load_model({"source": "local", "path": str(tmp_path)})


def test_unreachable_hub(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import; set the constant it consults too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as caught:
        load_model({"source": "hub", "id": "nobody/does-not-exist", "revision": "v1"})
    message = str(caught.value)
    assert "'nobody/does-not-exist'" in message and "'v1'" in message
    assert "no model hub is reachable" in message
    assert "hf download nobody/does-not-exist" in message and "source: local" in message


def test_invalid_hub_id():
    with pytest.raises(ModelLoadError, match="neither an existing directory nor a valid hub id"):
        load_model({"source": "hub", "id": "not a valid id"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loads_onto_cuda(tiny_model_dir):
    loaded = load_model({"source": "local", "path": str(tiny_model_dir("gpt2"))}, device="cuda")
    assert next(loaded.model.parameters()).device.type == "cuda"


def test_vocabulary_file_missing(tiny_model_dir, tmp_path):
    """Without merges.txt the vocabulary alone would split every word into single bytes."""
    directory = tmp_path / "no_merges"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    Tokenizer.from_file(str(directory / "tokenizer.json")).model.save(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json", "merges.txt"):
        (directory / name).unlink()
    with pytest.raises(ModelLoadError) as caught:
        load_model({"source": "hub", "id": str(directory)})
    message = str(caught.value)
    assert "tokenizer.json is missing and the other files build none" in message
    assert "merges" in message and "\n" not in message
    assert f"copy the tokenizer files saved with the model into {directory}" in message


def test_tokenizer_without_a_vocabulary(tiny_model_dir, tmp_path):
    """A tokenizer.json holding only the special token, beside a model with 400 rows."""
    directory = tmp_path / "empty_vocabulary"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    empty = Tokenizer(models.BPE())
    empty.add_special_tokens(["<|endoftext|>"])
    empty.save(str(directory / "tokenizer.json"))
    expected = "has only 1 tokens for the model's 400 embedding rows"
    with pytest.raises(ModelLoadError, match=expected):
        load_model({"source": "local", "path": str(directory)})


def test_truncated_weights_are_named(tiny_model_dir, tmp_path):
    directory = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir("llama"), directory)
    weights = directory / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError) as caught:
        load_model({"source": "hub", "id": str(directory)})
    message = str(caught.value)
    assert f"weights file {weights} is truncated or corrupt" in message and "\n" not in message
