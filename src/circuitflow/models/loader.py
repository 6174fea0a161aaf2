"""Load the causal LM and fast tokenizer a config entry names: built-in, local directory or hub id.

Every source ends in ``load_pretrained``, which hands its name to ``from_pretrained``; that accepts
a hub id and a local directory alike, so tests of saved directories exercise the hub code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import errors as hub_errors
from safetensors import SafetensorError, safe_open
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import cached_file

from circuitflow.errors import ModelLoadError


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    name: str  # where the model came from, for messages and reports


def load_model(spec: dict, device: torch.device | str = "cpu") -> LoadedModel:
    """Load the model a config entry describes: ``{"source": "builtin" | "local", "path": dir}``
    or ``{"source": "hub", "id": ..., "revision": ...}`` (token from the ``HF_TOKEN`` variable)."""
    source = spec.get("source")
    if source in ("builtin", "local"):
        if "path" not in spec:
            raise ModelLoadError(f"model entry {spec!r}: source {source!r} needs a 'path'")
        path = Path(spec["path"])
        name = f"{'built-in' if source == 'builtin' else 'local'} model at {path}"
        if not path.is_dir():
            hint = (
                "run the workflow's train_model rule to build it"
                if source == "builtin"
                else "check 'path', or download the model there "
                "(e.g. `hf download ORG/NAME --local-dir DIR` on a machine with hub access)"
            )
            raise ModelLoadError(f"{name}: directory not found; {hint}")
        return load_pretrained(str(path), device, name=name)
    if source == "hub":
        if "id" not in spec:
            raise ModelLoadError(f"model entry {spec!r}: source 'hub' needs an 'id'")
        revision = spec.get("revision")
        name = f"hub model {spec['id']!r}" + (f" (revision {revision!r})" if revision else "")
        return load_pretrained(
            spec["id"], device, revision=revision, token=os.environ.get("HF_TOKEN"), name=name
        )
    raise ModelLoadError(
        f"model entry {spec!r}: 'source' must be builtin, local or hub, got {source!r}"
    )


def load_pretrained(
    name_or_path: str,
    device: torch.device | str = "cpu",
    revision: str | None = None,
    token: str | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Load a float32 causal LM in eval mode on ``device`` and its fast tokenizer, from a hub id
    or a directory written by ``save_pretrained``."""
    name = name or repr(name_or_path)
    directory = Path(name_or_path)
    if directory.is_dir() and not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"{name}: no config.json in {name_or_path}; it should hold a model saved with "
            "save_pretrained (config.json, weights, tokenizer files)"
        )
    hub_kwargs = {"revision": revision, "token": token}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ModelLoadError(
                f"{name}: architecture {config.model_type!r} is not a causal language model "
                "transformers can load with AutoModelForCausalLM; use a decoder-only LM "
                "(e.g. GPT-2, GPT-Neo, Qwen2, Llama)"
            )
        model, info = AutoModelForCausalLM.from_pretrained(
            name_or_path, config=config, dtype=torch.float32, output_loading_info=True, **hub_kwargs
        )
        tokenizer = _load_tokenizer(name, name_or_path, hub_kwargs)
    except SafetensorError as err:
        raise _corrupt_weights(name, name_or_path, hub_kwargs, err) from err
    except (OSError, ValueError, RuntimeError) as err:
        raise _explain(name, name_or_path, err) from err
    # Missing weights would be left at their random initialisation without failing.
    missing = sorted(info["missing_keys"])
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ModelLoadError(
            f"{name}: the checkpoint lacks {len(missing)} weights of its architecture ({shown}); "
            "the weights do not match config.json"
        )
    _complete_special_tokens(name, model, tokenizer)
    _check_vocabulary(name, model, tokenizer)
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, name=name)


def _load_tokenizer(name: str, name_or_path: str, hub_kwargs: dict) -> PreTrainedTokenizerFast:
    """The tokenizer exactly as saved in tokenizer.json when there is one.

    In transformers 5, AutoTokenizer picks a model-specific class for some model types (qwen2 ->
    Qwen2Tokenizer) that rebuilds its own pre-tokenizer and normalizer instead of the saved ones,
    changing the token ids; the generic fast class keeps tokenizer.json as it is. Without a
    tokenizer.json, AutoTokenizer converts the vocabulary files with the model's own class.
    """
    if _has_file(name_or_path, "tokenizer.json", hub_kwargs):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path, **hub_kwargs)
    else:
        tokenizer = _tokenizer_from_vocabulary_files(name, name_or_path, hub_kwargs)
    if not tokenizer.is_fast:
        raise ModelLoadError(
            f"{name}: the tokenizer loads only as the slow class {type(tokenizer).__name__}; token "
            "offsets need a fast tokenizer: save one with tokenizer.json alongside the model"
        )
    return tokenizer


def _tokenizer_from_vocabulary_files(
    name: str, name_or_path: str, hub_kwargs: dict
) -> PreTrainedTokenizerFast:
    """The tokenizer the model's own class builds from its vocabulary files (vocab.json and
    merges.txt, tokenizer.model, ...). Without them transformers builds an empty tokenizer that
    fails only later, deep in the model, on the first id it does not know."""
    if Path(name_or_path).is_dir():
        advice = f"copy the tokenizer files saved with the model into {name_or_path}"
    else:
        advice = "use a repository that ships them, or download the model and add them locally"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
    except ValueError as err:
        raise ModelLoadError(
            f"{name}: no tokenizer: tokenizer.json is missing and the other files build none "
            f"({_one_line(err)}); {advice}"
        ) from err
    needed = [
        file for key, file in tokenizer.vocab_files_names.items()
        if key not in ("tokenizer_file", "tokenizer_config_file")
    ]
    missing = [file for file in needed if not _has_file(name_or_path, file, hub_kwargs)]
    if missing:
        raise ModelLoadError(
            f"{name}: no tokenizer: tokenizer.json is missing, and so "
            f"{'is' if len(missing) == 1 else 'are'} {' and '.join(missing)}, which "
            f"{type(tokenizer).__name__} would build one from; {advice}"
        )
    return tokenizer


def _has_file(name_or_path: str, file: str, hub_kwargs: dict) -> bool:
    # cached_file returns None for a file the directory or repository lacks.
    found = cached_file(
        name_or_path, file, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    return found is not None


def _complete_special_tokens(name: str, model: PreTrainedModel, tokenizer) -> None:
    """Ensure EOS and PAD ids exist on the tokenizer and PAD on the model config (padding uses
    EOS when the checkpoint defines no pad token)."""
    if tokenizer.eos_token_id is None:
        eos_id = model.config.eos_token_id
        if isinstance(eos_id, list):  # some configs list several stop tokens
            eos_id = eos_id[0] if eos_id else None
        if eos_id is None:
            raise ModelLoadError(
                f"{name}: neither the tokenizer nor config.json defines an end-of-sequence token"
            )
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _check_vocabulary(name: str, model: PreTrainedModel, tokenizer) -> None:
    """Token ids must index the embedding and unembedding rows. More rows than tokens is fine
    (padded vocabularies, or the BM1 fine-tunes' added pad token with its own row)."""
    rows = model.get_input_embeddings().weight.shape[0]
    output = model.get_output_embeddings()
    if output is not None:
        rows = min(rows, output.weight.shape[0])
    # Padding adds a few percent of rows at most; a tokenizer with a tenth of them has lost its
    # vocabulary (a tokenizer.json saved without its model, say), and most ids are unreachable.
    if len(tokenizer) * 10 < rows:
        raise ModelLoadError(
            f"{name}: the tokenizer has only {len(tokenizer)} tokens for the model's {rows} "
            "embedding rows; its tokenizer files are incomplete: copy the tokenizer files saved "
            "with the model (tokenizer.json, or its vocabulary files) into the model directory"
        )
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"{name}: the tokenizer has {len(tokenizer)} tokens but the model has only {rows} "
            f"embedding rows, so ids from {rows} on are out of range; the tokenizer does not "
            "belong to this checkpoint (save the fine-tuned model after resize_token_embeddings, "
            "together with its tokenizer)"
        )


_HUB_ERRORS = (
    hub_errors.HfHubHTTPError,
    hub_errors.LocalEntryNotFoundError,
    hub_errors.HFValidationError,
)


def _corrupt_weights(
    name: str, name_or_path: str, hub_kwargs: dict, err: SafetensorError
) -> ModelLoadError:
    """Name the weights file safetensors could not read (its error names none)."""
    folder = Path(cached_file(name_or_path, "config.json", **hub_kwargs)).parent
    unreadable = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError:
            unreadable.append(str(path))
    files = ", ".join(unreadable) or f"a .safetensors file in {folder}"
    return ModelLoadError(
        f"{name}: weights file {files} is truncated or corrupt ({_one_line(err)}); "
        "replace it with a complete copy (copy or download the model again)"
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _explain(name: str, name_or_path: str, err: Exception) -> ModelLoadError:
    """Turn a transformers / huggingface_hub failure into a message saying what to do."""
    # transformers re-raises hub errors as OSError; the hub's own error says what went wrong.
    cause = err
    while cause is not None and not isinstance(cause, _HUB_ERRORS):
        cause = cause.__cause__
    if isinstance(cause, hub_errors.LocalEntryNotFoundError):
        advice = (
            "no model hub is reachable (offline mode or no network) and the files are not in "
            "the local cache; download the model on a machine with hub access "
            f"(e.g. `hf download {name_or_path} --local-dir DIR`), copy it here and use "
            "`source: local` with `path: DIR`"
        )
    elif isinstance(cause, hub_errors.GatedRepoError):
        advice = "the repository is gated: accept its terms on the hub and set HF_TOKEN"
    elif isinstance(cause, hub_errors.RepositoryNotFoundError):
        advice = "no such repository on the hub (check the id; for a private one set HF_TOKEN)"
    elif isinstance(cause, hub_errors.RevisionNotFoundError):
        advice = "the repository has no such revision (check 'revision')"
    elif isinstance(cause, hub_errors.HfHubHTTPError):
        advice = "the hub answered with an error; try again later or download the model"
    elif isinstance(cause, hub_errors.HFValidationError):
        advice = "this is neither an existing directory nor a valid hub id"
    else:
        advice = (
            "check that it holds a complete model (config.json, matching weights, tokenizer "
            "files) saved with save_pretrained"
        )
    return ModelLoadError(
        f"{name}: could not load: {advice}. ({type(err).__name__}: {_one_line(err)})"
    )
