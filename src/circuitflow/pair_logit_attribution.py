"""Stage pair-logit-attribution: how much each component adds to the logit difference
logit(clean answer) − logit(corrupt answer) at the last position of each clean prompt of an EAP
feature's pairs (direct logit attribution, seed 003, on EAP's metric).

The components are those of ``circuitflow.logit_attribution`` (embeddings, heads, attention
biases, MLPs, the final norm's bias), each read along W_U[clean answer] − W_U[corrupt answer]
with the final norm's scale from the clean run; an unembedding bias adds its own difference as
``unembed.bias``. The values of a pair add up to the model's logit difference on its clean
prompt exactly (to float rounding). Only the clean prompts are run: the corrupt one supplies the
competing answer, not activations.
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from circuitflow.batching import Batches, right_padded
from circuitflow.device import resolve_device
from circuitflow.eap.batches import read_pairs
from circuitflow.logit_attribution import attribute, components
from circuitflow.models.loader import load_model
from circuitflow.models.weights import ModelWeights, weights_of
from circuitflow.outputs import save_figure
from circuitflow.stage import Stage
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("node", pa.string()), ("layer", pa.int32()),
    ("head", pa.int32()), ("value", pa.float32()),
])
NOTE = (
    "final norm's scale from the clean run, each component centred by itself: "
    "the components add up to the logit difference"
)


def pair_attribution(model, weights: ModelWeights, pairs: pd.DataFrame, pad_id: int):
    """The long table for ``pairs`` (one row per pair and component), and the model's own logit
    difference per pair, from its logits."""
    tokens = right_padded(list(pairs["clean_token_ids"]), pad_id).to(model.device)
    last = torch.tensor([len(ids) - 1 for ids in pairs["clean_token_ids"]], device=model.device)
    rows = torch.arange(len(last), device=model.device)

    def answers(column: str) -> torch.Tensor:
        ids = torch.tensor(pairs[column].tolist(), dtype=torch.long, device=model.device)
        return ids[:, None].expand_as(tokens)

    clean, corrupt = answers("clean_answer_id"), answers("corrupt_answer_id")
    values = attribute(model, weights, tokens, clean, against=corrupt)[:, rows, last]
    with torch.no_grad():
        # Logits at each row's last position only: the vocabulary may be large.
        logits = model(tokens, use_cache=False, logits_to_keep=last[:, None]).logits[:, 0]
    own = logits[rows, clean[:, 0]] - logits[rows, corrupt[:, 0]]
    parts = components(weights)
    table = pd.DataFrame({
        "pair_id": np.repeat(pairs["pair_id"].to_numpy(), len(parts)),
        "node": [c.node for c in parts] * len(pairs),
        "layer": pd.array([c.layer for c in parts] * len(pairs), "Int32"),
        "head": pd.array([c.head for c in parts] * len(pairs), "Int32"),
        "value": values.T.float().cpu().numpy().ravel(),
    })
    return table, own.float().cpu().numpy()


def mean_bar_figure(table: pd.DataFrame, order: list[str], model_diff: float, title: str):
    """Mean value per component over pairs, one bar each, in model order from the top."""
    means = table.groupby("node")["value"].mean().reindex(order)
    fig, ax = plt.subplots(figsize=(6, 0.18 * len(means) + 1.8))
    colours = np.where(means.to_numpy() >= 0, "tab:blue", "tab:red")
    ax.barh(range(len(means)), means.to_numpy(), color=colours)
    ax.set_yticks(range(len(means)), means.index, fontsize=6)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("mean contribution to logit(clean answer) − logit(corrupt answer)")
    n_pairs = table["pair_id"].nunique()
    ax.set_title(
        f"{title}, mean over {n_pairs} pairs\nmodel's logit difference {model_diff:.4g}, "
        f"sum of components {means.sum():.4g}\n{NOTE}",
        fontsize=7,
    )
    fig.tight_layout()
    return fig


def run_stage(params, pairs: str, table: str, plot: str) -> None:
    loaded = load_model(params["model"], resolve_device(params["device"]))
    model = loaded.model
    weights = weights_of(model)
    chosen = read_pairs(pairs).sort_values("pair_id", ignore_index=True)
    log.info("%s: attributing %d pairs", loaded.name, len(chosen))
    results = Batches(params["logit_attribution"]["batch_size"]).map(
        range(len(chosen)),
        lambda rows: pair_attribution(
            model, weights, chosen.iloc[rows.start : rows.stop], loaded.tokenizer.pad_token_id
        ),
    )
    result = pd.concat([part for part, _ in results], ignore_index=True)
    model_diff = float(np.concatenate([own for _, own in results]).mean())
    write_table(result, table, schema=SCHEMA)
    order = [c.node for c in components(weights)]
    title = (
        f"{params['model']['name']} {params['dataset']} {params['feature']}: direct logit "
        "attribution to clean − corrupt answer"
    )
    save_figure(mean_bar_figure(result, order, model_diff, title), plot,
                dpi=params["plots"]["dpi"])


STAGE = Stage(
    "pair-logit-attribution", run_stage, ("pairs",), ("table", "plot"),
    reads=("model", "device", "logit_attribution.batch_size", "plots.dpi"),
    job=("dataset", "feature"),
)
