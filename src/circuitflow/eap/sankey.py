"""The Sankey diagram of an EAP run's top edges, drawn twice from one geometry
(``sankey_geometry``): interactive with plotly, and a static PNG with matplotlib (plotly's own
PNG export needs a browser, which cluster nodes rarely have).

Components are boxes in columns by position in the forward pass, input at the left and logits at
the right; an edge into a head's query, key or value input ends at a port, a mark on the left
side of the head's box. A link is blue when its score is positive (the edge carries the clean
answer), red when negative, and as wide as its |score|, with a key of reference widths; no link
passes through a box.
"""

from __future__ import annotations

import math
import textwrap
from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import plotly.graph_objects as go
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch, PathPatch
from matplotlib.path import Path

from circuitflow import nodes

POSITIVE = "#1f4ed8"  # a link whose edge carries the clean answer
NEGATIVE = "#d62728"  # ... the corrupt answer
LINK_OPACITY = 0.55
MAX_LINK_WIDTH = 12.0  # the widest link, in points (PNG) or pixels (HTML)

COLUMN_PITCH = 2.6
BOX_WIDTH = 1.2
BOX_HEIGHT = 0.9
ROW_PITCH = 1.3
PORT_OFFSET = {"q": 0.28, "k": 0.0, "v": -0.28}  # from the box's centre, q on top
LANE_CLEARANCE = 0.35  # how far above the boxes it skips a link runs
LANE_SPACING = 0.25  # between links that run above the same columns
KIND_WORDS = {"q": "query", "k": "key", "v": "value"}
PX_PER_UNIT = 70  # HTML
INCHES_PER_UNIT = 0.75  # PNG

POSITIVE_NOTE = "blue: positive score, the edge carries the clean answer"
NEGATIVE_NOTE = "red: negative score, the edge carries the corrupt answer"
DASHED_NOTE = "dashed: not in the top edges of every batch"
PORT_NOTE = ("q, k, v marks on a head's left side: its query, key and value inputs, where edges "
             "into them end; an edge ending on a box's left side without a mark enters that MLP "
             "or the logits")
KV_NOTE = ("l{L}.kv{G}: key/value head G of layer L (grouped-query attention), shared by a group "
           "of query heads; edges into its key and value inputs end at its k and v marks")
WIDTH_NOTE = "link width ∝ |score|"


class Box(NamedTuple):
    """A component: a node, a head with its q/k/v inputs, or a grouped key/value head."""

    name: str
    column: int
    x0: float
    y0: float
    x1: float
    y1: float
    description: str

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


class Port(NamedTuple):
    """Where edges into a receiver end: a mark on the left side of its box."""

    receiver: str
    box: str
    kind: str
    x: float
    y: float
    description: str


class Link(NamedTuple):
    """An edge drawn as cubic Bézier segments, from its upstream box's right side to its
    receiver's port (or the left side of an MLP or logits box)."""

    upstream: str
    downstream: str
    score: float
    rank: int
    in_top_every_batch: bool
    color: str
    width: float
    segments: tuple[tuple[tuple[float, float], ...], ...]

    @property
    def name(self) -> str:
        return f"{self.upstream} → {self.downstream}"

    def points(self, per_segment: int = 24) -> list[tuple[float, float]]:
        """Points along the curve, ``per_segment`` steps per segment."""
        points = [self.segments[0][0]]
        for p0, p1, p2, p3 in self.segments:
            for i in range(1, per_segment + 1):
                t = i / per_segment
                points.append(tuple(
                    (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c
                    + t ** 3 * d
                    for a, b, c, d in zip(p0, p1, p2, p3)
                ))
        return points


class SankeyGeometry(NamedTuple):
    """What both renderers draw; ``scale`` holds (|score|, width) references for the width key."""

    boxes: list[Box]
    ports: list[Port]
    links: list[Link]
    scale: list[tuple[float, float]]

    def bounds(self) -> tuple[float, float, float, float]:
        """(x min, x max, y min, y max) of the boxes and links."""
        xs = [x for b in self.boxes for x in (b.x0, b.x1)]
        ys = [y for b in self.boxes for y in (b.y0, b.y1)]
        for link in self.links:
            points = link.points()
            xs += [x for x, _ in points]
            ys += [y for _, y in points]
        if not xs:
            return 0.0, 0.0, 0.0, 0.0
        return min(xs), max(xs), min(ys), max(ys)

    @property
    def has_kv_heads(self) -> bool:
        return any(nodes.parse(p.receiver).grouped for p in self.ports)


def node_position(name: str) -> tuple[float, tuple]:
    """(column, order within the column) of a node or receiver name (``circuitflow.nodes``).

    Layer l's heads come before its MLP, which reads them; a head's receivers share the head's
    column, listed after it (shared key/value receivers after all heads).
    """
    node = nodes.parse(name)
    if node.layer is None:
        column = 0 if name == nodes.INPUT else float("inf")
    else:
        column = 2 * node.layer + (2 if node.is_mlp else 1)
    return column, nodes.sort_key(name)


def box_name(name: str) -> str:
    """The box a node or receiver is drawn in: ``l1.h3.q`` in ``l1.h3``, ``l1.kv0.k`` in
    ``l1.kv0``; a node in its own."""
    return name.rsplit(".", 1)[0] if nodes.parse(name).grouped else nodes.writer_of(name)


def layout(edges: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """Box -> (column index, row in its column, boxes in that column), empty columns dropped."""
    names = sorted(set(edges["upstream"]) | set(edges["downstream"]), key=node_position)
    columns = sorted({node_position(n)[0] for n in names})
    members: dict[int, list[str]] = {}
    for name in names:
        group = members.setdefault(columns.index(node_position(name)[0]), [])
        if box_name(name) not in group:
            group.append(box_name(name))
    return {
        name: (col, row, len(group))
        for col, group in members.items()
        for row, name in enumerate(group)
    }


def box_description(member: str) -> str:
    """What the box holding node or receiver ``member`` is, in words."""
    name, node = box_name(member), nodes.parse(member)
    if member == nodes.INPUT:
        return f"{name}: the embeddings"
    if member == nodes.LOGITS:
        return f"{name}: the final residual stream, read by the unembedding"
    if node.grouped:
        return (f"{name}: key/value head {node.head} of layer {node.layer} (grouped-query "
                "attention), shared by a group of query heads")
    if node.is_head:
        return f"{name}: head {node.head} of layer {node.layer}"
    return f"{name}: MLP of layer {node.layer}"


def port_description(receiver: str) -> str:
    """``l1.h3.q: query input of head l1.h3``."""
    node = nodes.parse(receiver)
    owner = "key/value head" if node.grouped else "head"
    return f"{receiver}: {KIND_WORDS[node.kind]} input of {owner} {box_name(receiver)}"


def reference_scores(biggest: float) -> list[float]:
    """The three largest round |scores| (1, 2 or 5 times a power of ten) up to ``biggest``."""
    power = math.floor(math.log10(biggest))
    steps = [m * 10.0 ** e for e in (power - 1, power) for m in (1, 2, 5)]
    return [s for s in steps if s <= biggest * (1 + 1e-9)][-3:]


def s_curve(start, end) -> tuple:
    """A cubic that leaves ``start`` and reaches ``end`` horizontally, never leaving the x range
    between them."""
    middle = (start[0] + end[0]) / 2
    return start, (middle, start[1]), (middle, end[1]), end


def straight(start, end) -> tuple:
    return start, start, end, end


def skip_lanes(spans: dict[int, tuple[int, int, float]]) -> dict[int, float]:
    """Heights of the links that skip columns, from ``spans[i] = (first, last, lowest)``: link i
    skips columns first..last and runs at ``lowest`` or above; links over a common column run
    ``LANE_SPACING`` apart or more, the shortest lowest."""
    lanes: dict[int, float] = {}
    for i in sorted(spans, key=lambda i: spans[i][1] - spans[i][0]):
        first, last, lane = spans[i]
        overlapping = [lanes[j] for j in lanes if spans[j][0] <= last and first <= spans[j][1]]
        for other in sorted(overlapping):
            if abs(other - lane) < LANE_SPACING:
                lane = other + LANE_SPACING
        lanes[i] = lane
    return lanes


def sankey_geometry(edges: pd.DataFrame) -> SankeyGeometry:
    """Boxes in columns by position in the forward pass, ports on heads, and links routed so none
    passes through a box: straight across the gap between adjacent columns, over the boxes of
    the columns a link skips."""
    places = layout(edges)
    tallest = max((n for _, _, n in places.values()), default=1)
    member = {box_name(n): n for n in set(edges["upstream"]) | set(edges["downstream"])}
    boxes: dict[str, Box] = {}
    for name, (column, row, n) in places.items():
        x = COLUMN_PITCH * column
        y = ROW_PITCH * ((tallest - 1) / 2 - row + (n - 1) / 2)  # columns centred on each other
        boxes[name] = Box(name, column, x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2, x + BOX_WIDTH / 2,
                          y + BOX_HEIGHT / 2, box_description(member[name]))
    ports = {}
    for receiver in sorted(set(edges["downstream"]), key=node_position):
        kind = nodes.parse(receiver).kind
        if kind is not None:
            box = boxes[box_name(receiver)]
            ports[receiver] = Port(receiver, box.name, kind, box.x0,
                                   box.centre[1] + PORT_OFFSET[kind], port_description(receiver))
    column_top: dict[int, float] = {}
    for box in boxes.values():
        column_top[box.column] = max(column_top.get(box.column, -math.inf), box.y1)

    def ends(edge) -> tuple[tuple[float, float], tuple[float, float]]:
        up, down = boxes[box_name(edge.upstream)], boxes[box_name(edge.downstream)]
        if down.column <= up.column:
            raise ValueError(f"edge {edge.upstream} → {edge.downstream} does not run forward")
        port = ports.get(edge.downstream)
        return (up.x1, up.centre[1]), ((port.x, port.y) if port else (down.x0, down.centre[1]))

    spans = {}
    for i, edge in enumerate(edges.itertuples()):
        first = boxes[box_name(edge.upstream)].column + 1
        last = boxes[box_name(edge.downstream)].column - 1
        if first <= last:
            (_, y0), (_, y1) = ends(edge)
            lowest = max(column_top[c] for c in range(first, last + 1)) + LANE_CLEARANCE
            spans[i] = (first, last, max(lowest, y0, y1))
    lanes = skip_lanes(spans)
    biggest = float(edges["score"].abs().max()) if len(edges) else 0.0
    links = []
    for i, edge in enumerate(edges.itertuples()):
        start, end = ends(edge)
        if i in lanes:
            first, last, _ = spans[i]
            over = (COLUMN_PITCH * first - BOX_WIDTH / 2, lanes[i])
            beyond = (COLUMN_PITCH * last + BOX_WIDTH / 2, lanes[i])
            segments = (s_curve(start, over), straight(over, beyond), s_curve(beyond, end))
        else:
            segments = (s_curve(start, end),)
        links.append(Link(
            edge.upstream, edge.downstream, float(edge.score), int(edge.rank),
            bool(edge.in_top_every_batch), NEGATIVE if edge.score < 0 else POSITIVE,
            MAX_LINK_WIDTH * abs(edge.score) / (biggest or 1.0), segments,
        ))
    references = reference_scores(biggest) if biggest else []
    scale = [(s, MAX_LINK_WIDTH * s / biggest) for s in references]
    return SankeyGeometry(list(boxes.values()), list(ports.values()), links, scale)


def scale_label(score: float) -> str:
    return f"|score| {score:g}"


def link_hover(link: Link) -> str:
    return (f"{link.name}<br>score {link.score:.4g} (rank {link.rank})<br>in the top edges of "
            f"every batch: {'yes' if link.in_top_every_batch else 'no'}")


def counts_line(geometry: SankeyGeometry) -> str:
    return f"{len(geometry.links)} edges between {len(geometry.boxes)} components"


def html_lines(text: str) -> str:
    return textwrap.fill(text, 90).replace("\n", "<br>")


def sankey_figure(edges: pd.DataFrame, title: str) -> go.Figure:
    """The interactive diagram: boxes as shapes, links and ports as scatter traces to hover."""
    geometry = sankey_geometry(edges)
    fig = go.Figure()
    for link in geometry.links:
        xs, ys = zip(*link.points())
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", name=link.name, showlegend=False, opacity=LINK_OPACITY,
            line={"color": link.color, "width": link.width,
                  "dash": "solid" if link.in_top_every_batch else "dash"},
            hovertemplate=link_hover(link) + "<extra></extra>",
        ))
    box_line = {"color": "dimgray", "width": 1}
    for box in geometry.boxes:
        fig.add_shape(type="rect", name=box.name, x0=box.x0, y0=box.y0, x1=box.x1, y1=box.y1,
                      layer="below", fillcolor="whitesmoke", line=box_line)
    fig.add_trace(go.Scatter(
        x=[b.centre[0] for b in geometry.boxes], y=[b.centre[1] for b in geometry.boxes],
        mode="text", text=[b.name for b in geometry.boxes], name="components", showlegend=False,
        hovertext=[b.description for b in geometry.boxes], hoverinfo="text",
    ))
    port_marker = {"symbol": "triangle-right", "size": 9, "color": "black"}
    fig.add_trace(go.Scatter(
        x=[p.x for p in geometry.ports], y=[p.y for p in geometry.ports], mode="markers+text",
        marker=port_marker, name="ports", text=[p.kind for p in geometry.ports],
        textposition="middle right", showlegend=False,
        hovertext=[p.description for p in geometry.ports], hoverinfo="text",
    ))
    xmin, xmax, ymin, ymax = geometry.bounds()
    # The width key is drawn in the plot, not the legend, which caps line widths at 10 px.
    key_y = ymin - 0.8
    for i, (score, width) in enumerate(geometry.scale):
        x = xmin + 2.2 * i
        fig.add_trace(go.Scatter(
            x=[x, x + 0.9], y=[key_y, key_y], mode="lines+text", name=scale_label(score),
            text=["", " " + scale_label(score)], textposition="middle right", showlegend=False,
            line={"color": "gray", "width": width}, hoverinfo="skip",
        ))
    if geometry.scale:
        fig.add_annotation(x=xmin, y=key_y + 0.45, text=WIDTH_NOTE + ", for example:",
                           showarrow=False, xanchor="left")
        ymin, xmax = key_y - 0.3, max(xmax, xmin + 2.2 * len(geometry.scale))
    legend = [
        go.Scatter(name=POSITIVE_NOTE, mode="lines", line={"color": POSITIVE, "width": 4}),
        go.Scatter(name=NEGATIVE_NOTE, mode="lines", line={"color": NEGATIVE, "width": 4}),
        go.Scatter(name=DASHED_NOTE, mode="lines", line={"color": "gray", "width": 4,
                                                         "dash": "dash"}),
        go.Scatter(name=html_lines(PORT_NOTE), mode="markers", marker=port_marker),
    ]
    if geometry.has_kv_heads:
        legend.append(go.Scatter(name=html_lines(KV_NOTE), mode="markers", marker={
            "symbol": "square", "size": 12, "color": "whitesmoke", "line": box_line,
        }))
    for entry in legend:  # entries of the legend only, with no points to draw
        fig.add_trace(entry.update(x=[None], y=[None], hoverinfo="skip"))
    legend_lines = sum(entry.name.count("<br>") + 1 for entry in legend)
    if not geometry.boxes:
        fig.add_annotation(x=0, y=0, text="no edges", showarrow=False)
    fig.update_layout(
        title=f"{title}<br><sup>{counts_line(geometry)}; hover a link, box or port for details"
              "</sup>",
        width=max(700, int((xmax - xmin + 1) * PX_PER_UNIT) + 40),
        height=int((ymax - ymin + 1) * PX_PER_UNIT) + 140 + 19 * legend_lines,
        margin={"l": 20, "r": 20, "t": 90, "b": 20},
        xaxis={"visible": False, "range": [xmin - 0.5, xmax + 0.5]},
        yaxis={"visible": False, "range": [ymin - 0.5, ymax + 0.5], "scaleanchor": "x"},
        legend={"x": 0, "y": 0, "yanchor": "top", "font": {"size": 11}, "itemclick": False,
                "itemdoubleclick": False},
        paper_bgcolor="white", plot_bgcolor="white", hovermode="closest", font_size=13,
    )
    return fig


def sankey_png_figure(edges: pd.DataFrame, title: str):
    """The same diagram in matplotlib, from the same geometry."""
    geometry = sankey_geometry(edges)
    xmin, xmax, ymin, ymax = geometry.bounds()
    fig, ax = plt.subplots(figsize=(
        max(7.0, (xmax - xmin + 1) * INCHES_PER_UNIT), (ymax - ymin + 1) * INCHES_PER_UNIT + 0.8,
    ))
    for link in geometry.links:
        vertices = [link.segments[0][0]] + [p for segment in link.segments for p in segment[1:]]
        codes = [Path.MOVETO] + [Path.CURVE4] * (len(vertices) - 1)
        ax.add_patch(PathPatch(
            Path(vertices, codes), facecolor="none", edgecolor=link.color, alpha=LINK_OPACITY,
            linewidth=link.width, linestyle="-" if link.in_top_every_batch else "--",
            capstyle="butt", gid=link.name, zorder=2,
        ))
    for box in geometry.boxes:
        ax.add_patch(FancyBboxPatch(
            (box.x0, box.y0), BOX_WIDTH, BOX_HEIGHT, boxstyle="round,pad=0,rounding_size=0.08",
            facecolor="whitesmoke", edgecolor="dimgray", gid=box.name, zorder=3,
        ))
        ax.text(*box.centre, box.name, ha="center", va="center", fontsize=9, zorder=4)
    ax.plot([p.x for p in geometry.ports], [p.y for p in geometry.ports], ls="none", marker=">",
            markersize=5, color="black", gid="ports", zorder=5)
    for port in geometry.ports:
        ax.text(port.x + 0.08, port.y, port.kind, ha="left", va="center", fontsize=7, zorder=5)
    if not geometry.boxes:
        ax.text(0, 0, "no edges", ha="center", va="center")
    ax.set_xlim(xmin - 0.3, xmax + 0.3)
    ax.set_ylim(ymin - 0.3, ymax + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    meaning = [
        Line2D([], [], color=POSITIVE, lw=3, label=POSITIVE_NOTE),
        Line2D([], [], color=NEGATIVE, lw=3, label=NEGATIVE_NOTE),
        Line2D([], [], color="gray", lw=2, ls="--", label=DASHED_NOTE),
        Line2D([], [], color="black", ls="none", marker=">", label=textwrap.fill(PORT_NOTE, 70)),
    ]
    if geometry.has_kv_heads:
        meaning.append(Patch(facecolor="whitesmoke", edgecolor="dimgray",
                             label=textwrap.fill(KV_NOTE, 70)))
    legend = ax.legend(handles=meaning, loc="upper left", bbox_to_anchor=(0.0, 0.0), fontsize=8,
                       frameon=False)
    if geometry.scale:
        # A second legend replaces the first unless that is an artist; unclipped, so it lies
        # below the axes and inside the saved figure's tight bounding box.
        ax.add_artist(legend).set_clip_on(False)
        ax.legend(
            handles=[Line2D([], [], color="gray", lw=width, solid_capstyle="butt",
                            label=scale_label(score)) for score, width in geometry.scale],
            title=WIDTH_NOTE, loc="upper right", bbox_to_anchor=(1.0, 0.0), fontsize=8,
            title_fontsize=8, frameon=False, handlelength=3,
        )
    ax.set_title(f"{title}\n{counts_line(geometry)}", fontsize=11)
    return fig
