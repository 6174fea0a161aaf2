"""Stage node-pca: does one head's or MLP's output at one position separate the examples'
classes? Seed 002's PCA of one head, for every node at once (scores: ``node_pca_scores``).

Examples: those of clean.parquet the model answers correctly that have a class in
examples.parquet. A dataset whose examples have no class at all is an error.

Sites: the sets of (example, position) the nodes are read at, one per ``pca.roles`` entry and
one per useful-node position:
- ``class``: in each example, its ``class_role`` token;
- a token role (e.g. ``sql_agg_1``): in each example that has it, that role's token;
- ``p{N}``: position N, in every example that long, for each position of useful_nodes.json
  (``pca.useful_positions``).
A role spanning several tokens is read at its last one, which has seen the whole span;
``pca.offset`` moves the role sites (-1: the position whose prediction is that token).

Nodes: every head ``l{L}.h{H}`` (its output z_h @ W_O[h] without the projection's bias, the
seed's ``hook_result``) and every MLP ``l{L}.mlp``. One forward pass per batch of examples
records all of them at every site: hooks keep the input of each attention output projection
(all heads' z) and each MLP's output at the batch's site positions, and the batch runs only up to
its last such position.

Tags: a node whose verdict is "2" or "3" and whose k-means partition of that many clusters
agrees with the classes at least ``pca.tag_min_ari`` (adjusted Rand index) gets the tag
``PCA:2`` or ``PCA:3`` at the site's position (its most common one where examples differ), in
QuantaMechInterp's node list, together with the useful nodes and their ``Fail%`` tags.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from circuitflow import nodes as node_names
from circuitflow.ablation.layout import Layout, layout_of
from circuitflow.batching import Batches, right_padded
from circuitflow.device import resolve_device
from circuitflow.errors import ConfigError
from circuitflow.json_files import read_json
from circuitflow.models.loader import load_model
from circuitflow.node_pca_plots import write_plots
from circuitflow.node_pca_scores import CLUSTER_COUNTS, pca_tag, score_node
from circuitflow.outputs import write_text
from circuitflow.stage import Stage
from circuitflow.tables import read_table, write_table

log = logging.getLogger(__name__)

CLEAN_COLUMNS = ["example_id", "correct", "prompt_token_ids", "answer_token_ids", "token_roles"]
EXAMPLE_COLUMNS = ["example_id", "class", "class_role"]
CLASS_SITE = "class"


@dataclass
class Site:
    name: str  # "class", a token role, or "p{N}"
    role: str  # the token role there (the most common one where examples differ)
    rows: np.ndarray  # indexes into the examples, ascending
    positions: np.ndarray  # the position read in each of those examples


def labelled_examples(clean: str, examples: str, dataset: str) -> pd.DataFrame:
    """The correctly answered examples that have a class, by example_id."""
    labels = read_table(examples, columns=EXAMPLE_COLUMNS)
    if labels["class"].isna().all():
        raise ConfigError(
            f"dataset {dataset!r} has no class labels ({examples}: column 'class' is empty): "
            "node PCA needs a task whose examples carry classes; do not run it on this dataset"
        )
    table = read_table(clean, columns=CLEAN_COLUMNS)
    table = table[table["correct"].astype(bool)].merge(labels, on="example_id")
    table = table[table["class"].notna()].sort_values("example_id", ignore_index=True)
    table["tokens"] = [list(p) + list(a) for p, a in
                       zip(table["prompt_token_ids"], table["answer_token_ids"])]
    return table


def _last_index(roles, role: str) -> int:
    """The last position with ``role``, -1 if none."""
    matches = [i for i, r in enumerate(roles) if r == role]
    return matches[-1] if matches else -1


def _role_site(name: str, table: pd.DataFrame, wanted: list[str], offset: int) -> Site | None:
    """The site of role ``wanted[i]`` in example i, shifted by ``offset``; examples without it,
    or where the shift leaves the sequence, are left out."""
    found = np.array([_last_index(r, w) for r, w in zip(table["token_roles"], wanted)], dtype=int)
    lengths = table["tokens"].map(len).to_numpy()
    shifted = found + offset
    keep = (found >= 0) & (shifted >= 0) & (shifted < lengths)
    if not keep.any():
        return None
    rows = np.flatnonzero(keep)
    role = Counter(wanted[i] for i in rows).most_common(1)[0][0]
    return Site(name, role, rows, shifted[rows])


def find_sites(
    table: pd.DataFrame, roles: list[str], offset: int, positions: list[int]
) -> list[Site]:
    """The sites of ``roles`` (``class`` or token roles) and of absolute ``positions``."""
    sites = []
    for role in roles:
        wanted = table["class_role"].tolist() if role == CLASS_SITE else [role] * len(table)
        site = _role_site(role, table, wanted, offset)
        if site is None:
            log.warning("pca.roles: no example has a %r position; skipped", role)
            continue
        missing = len(table) - len(site.rows)
        if missing:
            log.warning("site %r: %d of %d examples lack it", role, missing, len(table))
        sites.append(site)
    lengths = table["tokens"].map(len).to_numpy()
    for p in sorted(set(positions)):
        rows = np.flatnonzero(lengths > p)
        if not len(rows):
            log.warning("useful position %d: no example is that long; skipped", p)
            continue
        role = Counter(table["token_roles"][i][p] for i in rows).most_common(1)[0][0]
        sites.append(Site(f"p{p}", role, rows, np.full(len(rows), p)))
    return sites


@torch.no_grad()
def head_output_weights(projection: torch.nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
    """W_O per head [n_heads, d_head, d_model], as the output projection computes it: the
    image of each unit vector of its input, less the image of zero (its bias)."""
    param = next(projection.parameters())
    unit = torch.eye(n_heads * d_head, device=param.device, dtype=param.dtype)
    weights = projection(unit) - projection(torch.zeros_like(unit[:1]))
    return weights.view(n_heads, d_head, -1)


class Recorder:
    """Hooks that keep, for each site, every layer's head inputs z [n, n_heads * d_head] and
    MLP outputs [n, d_model] at the site's positions of the batch being run."""

    def __init__(self, model, layout: Layout):
        self._picks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept: dict[tuple[str, int, int], torch.Tensor] = {}
        self._handles = []
        for layer in range(layout.n_layers):
            heads = model.get_submodule(layout.head_input(layer))
            mlp = model.get_submodule(layout.mlp_output(layer))
            self._handles.append(heads.register_forward_pre_hook(self._keeper("z", layer)))
            self._handles.append(mlp.register_forward_hook(self._keeper("mlp", layer)))

    def _keeper(self, kind: str, layer: int):
        def keep(module, args, output=None):
            values = args[0] if kind == "z" else output
            for site, (rows, positions) in enumerate(self._picks):
                self._kept[kind, layer, site] = values[rows, positions]

        return keep

    def run(self, model, tokens: torch.Tensor, picks) -> dict:
        """Run ``tokens`` [B, T]; ``picks[s]`` = (rows, positions) of site s in the batch."""
        self._picks, self._kept = picks, {}
        try:
            # Right padding is never read by a real position; the mask of ones only says so to
            # transformers, which warns about padding otherwise.
            model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False)
            return self._kept
        finally:
            self._picks, self._kept = [], {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def record_sites(model, tokens: list[list[int]], sites: list[Site], batch_size: int, pad_id: int):
    """Per site, per layer: (z [n_rows, n_heads * d_head], MLP output [n_rows, d_model]) at
    the site's positions, rows in the site's order."""
    layout = layout_of(model)
    device = next(model.parameters()).device
    # The transformer without its unembedding: no node needs the logits.
    body = model.get_submodule(model.base_model_prefix)
    recorder = Recorder(model, layout)

    def process(chunk):
        start, stop = chunk[0], chunk[-1] + 1
        picks, last = [], 0
        for site in sites:
            inside = (site.rows >= start) & (site.rows < stop)
            positions = site.positions[inside]
            last = max(last, int(positions.max(initial=0)))
            picks.append((torch.as_tensor(site.rows[inside] - start, device=device),
                          torch.as_tensor(positions, device=device)))
        # Causal attention: positions after the last one read change nothing read.
        batch = right_padded([tokens[i][: last + 1] for i in chunk], pad_id).to(device)
        return recorder.run(body, batch, picks)

    try:
        parts = Batches(batch_size).map(range(len(tokens)), process, desc="node PCA")
    finally:
        recorder.remove()
    return [
        [tuple(torch.cat([p[kind, layer, s] for p in parts]) for kind in ("z", "mlp"))
         for layer in range(layout.n_layers)]
        for s in range(len(sites))
    ]


def node_outputs(recorded, weights: list[torch.Tensor], layout: Layout):
    """(node name, outputs [n, d_model] as float64 numpy) for one site, in model order."""
    for layer, (z, mlp) in enumerate(recorded):
        per_head = z.view(len(z), layout.n_heads, layout.d_head)
        for h in range(layout.n_heads):
            out = per_head[:, h] @ weights[layer][h]
            yield node_names.head(layer, h), out.double().cpu().numpy()
        yield node_names.mlp(layer), mlp.double().cpu().numpy()


def _padded(values: np.ndarray, k: int) -> np.ndarray:
    """``values`` [..., j <= k] with NaN columns up to k (fewer components than asked for)."""
    out = np.full((*values.shape[:-1], k), np.nan)
    out[..., : values.shape[-1]] = values
    return out


def analyse(
    model, pad_id: int, table: pd.DataFrame, sites: list[Site], settings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per node and site, one row per node, site and example)."""
    layout = layout_of(model)
    weights = [
        head_output_weights(model.get_submodule(layout.head_input(layer)), layout.n_heads,
                            layout.d_head)
        for layer in range(layout.n_layers)
    ]
    k = settings["n_components"]
    recorded = record_sites(model, table["tokens"].tolist(), sites, settings["batch_size"], pad_id)
    summary, points = [], []
    for site, site_recorded in zip(sites, recorded):
        classes = table["class"].astype(str).to_numpy()[site.rows]
        counts = Counter(site.positions.tolist())
        where = {
            "site": site.name, "role": site.role,
            "position": counts.most_common(1)[0][0], "n_positions": len(counts),
        }
        for node, outputs in node_outputs(site_recorded, weights, layout):
            scores = score_node(outputs, classes, k, settings["cv_folds"], settings["seed"])
            evr = _padded(scores.explained_variance_ratio, k)
            clusters = scores.clusters
            summary.append({
                "node": node, **where,
                "n_examples": len(site.rows), "n_classes": len(set(classes)),
                **{f"evr_{i}": evr[i] for i in range(k)},
                "separation_accuracy": scores.separation_accuracy,
                "chance_accuracy": scores.chance_accuracy,
                "class_silhouette": scores.class_silhouette,
                **{f"silhouette_{c}": v for c, v in clusters.silhouette.items()},
                **{f"calinski_harabasz_{c}": v for c, v in clusters.calinski_harabasz.items()},
                **{f"adjusted_rand_{c}": v for c, v in clusters.adjusted_rand.items()},
                "verdict": clusters.verdict,
                "tag": pca_tag(clusters, settings["tag_min_ari"]),
            })
            coords = _padded(scores.coords, k)
            points.append(pd.DataFrame({
                "node": node, "site": site.name, "position": site.positions,
                "example_id": table["example_id"].to_numpy()[site.rows], "class": classes,
                **{f"pc{i}": coords[:, i] for i in range(k)},
            }))
        log.info("site %s: %d examples scored", site.name, len(site.rows))
    return summary_table(summary, k), points_table(points, k)


def _float_columns(k: int) -> list[str]:
    return (
        [f"evr_{i}" for i in range(k)]
        + ["separation_accuracy", "chance_accuracy", "class_silhouette"]
        + [f"{score}_{c}" for score in ("silhouette", "calinski_harabasz", "adjusted_rand")
           for c in CLUSTER_COUNTS]
    )


NODE_FIELDS = [("node", pa.string()), ("layer", pa.int32()), ("head", pa.int32())]


def summary_schema(k: int) -> pa.Schema:
    return pa.schema(
        NODE_FIELDS
        + [("site", pa.string()), ("role", pa.string()), ("position", pa.int32()),
           ("n_positions", pa.int32()), ("n_examples", pa.int32()), ("n_classes", pa.int32())]
        + [(name, pa.float64()) for name in _float_columns(k)]
        + [("verdict", pa.string()), ("tag", pa.string())]
    )


def points_schema(k: int) -> pa.Schema:
    return pa.schema(
        NODE_FIELDS
        + [("site", pa.string()), ("position", pa.int32()), ("example_id", pa.int64()),
           ("class", pa.string())]
        + [(f"pc{i}", pa.float64()) for i in range(k)]
    )


def _with_node_columns(table: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """``table`` with the layer and head of its ``node``, columns in ``schema``'s order."""
    names = table["node"].tolist()
    unique = list(dict.fromkeys(names))
    columns = node_names.columns(unique).set_index("node").loc[names].reset_index()
    return pd.concat([columns, table.drop(columns="node").reset_index(drop=True)], axis=1)[
        schema.names
    ]


def summary_table(rows: list[dict], k: int) -> pd.DataFrame:
    schema = summary_schema(k)
    table = pd.DataFrame(rows, columns=[n for n in schema.names if n not in ("layer", "head")])
    return _with_node_columns(table, schema)


def points_table(blocks: list[pd.DataFrame], k: int) -> pd.DataFrame:
    schema = points_schema(k)
    if not blocks:
        return _with_node_columns(
            pd.DataFrame(columns=[n for n in schema.names if n not in ("layer", "head")]), schema
        )
    return _with_node_columns(pd.concat(blocks, ignore_index=True), schema)


def pca_tags(summary: pd.DataFrame, useful: list[dict]) -> list[dict]:
    """The useful nodes and the PCA-tagged ones in one QuantaMechInterp node list: a node that
    is both carries its Fail% and its PCA tags; ordered by position, layer, heads before the
    MLP, head."""
    entries: dict[tuple[str, int], dict] = {}
    for entry in useful:
        entries[node_names.from_quanta(entry)] = {**entry, "tags": list(entry["tags"])}
    for row in summary[summary["tag"].notna()].itertuples():
        key = (row.node, int(row.position))
        entry = entries.setdefault(key, node_names.to_quanta(row.node, row.position, []))
        if row.tag not in entry["tags"]:
            entry["tags"].append(row.tag)
    return sorted(
        entries.values(),
        key=lambda e: (e["position"], e["layer"], not e["is_head"], e["num"]),
    )


def run_stage(
    params, clean: str, examples: str, summary: str, points: str, tags: str,
    scatter: str, scatter_interactive: str, heatmap: str, useful: str | None = None,
) -> None:
    settings = params["pca"]
    dataset = params["dataset"]
    table = labelled_examples(clean, examples, dataset)
    useful_list = []
    if settings["useful_positions"]:
        if useful is None:
            raise ConfigError(
                "pca.useful_positions is true but no useful_nodes.json was given: set it to "
                "false, or run node ablation for this dataset"
            )
        useful_list = read_json(useful)
    sites = find_sites(
        table, list(settings["roles"]), settings["offset"],
        [node_names.from_quanta(e)[1] for e in useful_list],
    )
    k = settings["n_components"]
    if table.empty or not sites:
        log.warning("%s: no correctly answered example with a class at any site", clean)
        node_table, point_table = summary_table([], k), points_table([], k)
    else:
        loaded = load_model(params["model"], resolve_device(params["device"]))
        log.info("%s on %s: %d examples, %d sites", loaded.name, dataset, len(table), len(sites))
        node_table, point_table = analyse(
            loaded.model, loaded.tokenizer.pad_token_id, table, sites, settings
        )
    write_table(node_table, summary, schema=summary_schema(k))
    write_table(point_table, points, schema=points_schema(k))
    write_text(json.dumps(pca_tags(node_table, useful_list), indent=1) + "\n", tags)
    title = f"{params['model']['name']} {dataset} ({len(table)} correct examples with a class)"
    write_plots(
        node_table, point_table, title, settings["max_nodes_plotted"], params["plots"]["dpi"],
        scatter=scatter, interactive=scatter_interactive, heatmap=heatmap,
    )


STAGE = Stage(
    "node-pca", run_stage, ("clean", "examples", "useful"),
    ("summary", "points", "tags", "scatter", "scatter_interactive", "heatmap"),
    reads=("model", "device", "pca", "plots.dpi"), job=("dataset",),
)
