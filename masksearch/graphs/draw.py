"""Draw the graphs offline: Mermaid text, Graphviz DOT, PNG (through graphviz ``dot``) or ASCII.

Nothing here calls mermaid.ink or any web service: the picture is built from the compiled graph's
own nodes and edges (``graph.get_graph()``).  Conditional edges are dashed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

FORMATS = ("mermaid", "png", "ascii", "dot")


def get_graph(name: str) -> Any:
    """The compiled ``teacher`` or ``student`` graph."""
    if name == "teacher":
        from masksearch.graphs.teacher import build_teacher_graph

        return build_teacher_graph()
    if name == "student":
        from masksearch.graphs.student import build_student_graph  # lazy: another layer

        return build_student_graph()
    raise ValueError(f"unknown graph {name!r}: use teacher or student")


def _edges(graph: Any) -> tuple[list[str], list[tuple[str, str, bool, str | None]]]:
    g = graph.get_graph() if hasattr(graph, "get_graph") else graph
    nodes = list(g.nodes)
    edges = [(e.source, e.target, bool(e.conditional), e.data if isinstance(e.data, str) else None) for e in g.edges]
    return nodes, edges


# edge labels for the pictures (purely cosmetic; the graph itself is read from get_graph())
EDGE_LABELS = {
    ("rewriter", "search"): "Send x N queries",
    ("observer", "rewriter"): "next sub-query",
    ("observer", "planner"): "re-plan",
    ("observer", "judge"): "answer / turn cap",
    ("planner", "judge"): "unreadable / error",
    ("rewriter", "judge"): "unreadable / error",
    ("policy", "search"): "<search>",
    ("policy", "policy"): "correction",
    ("policy", "__end__"): "<answer> / turn cap",
    ("search", "policy"): "<information>",
    ("search", "__end__"): "token budget",
}


def _label(node: str) -> str:
    return {"__start__": "START", "__end__": "END"}.get(node, node)


def to_dot(graph: Any, title: str = "") -> str:
    nodes, edges = _edges(graph)
    lines = ["digraph G {", '  rankdir=TB; bgcolor="white";',
             '  node [shape=box, style="rounded,filled", fillcolor="#f2f0ff", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    if title:
        lines.append(f'  labelloc="t"; label="{title}";')
    for n in nodes:
        if n in ("__start__", "__end__"):
            lines.append(f'  "{n}" [label="{_label(n)}", shape=ellipse, fillcolor="#bfb6fc"];')
        else:
            lines.append(f'  "{n}" [label="{n}"];')
    for s, t, cond, data in edges:
        attrs = ['style=dashed'] if cond else []
        label = data or EDGE_LABELS.get((s, t))
        if label:
            attrs.append(f'label="{label}"')
        lines.append(f'  "{s}" -> "{t}"' + (f' [{", ".join(attrs)}]' if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_ascii(graph: Any) -> str:
    """A dependency-free text picture: each node with its outgoing edges (``-->`` fixed, ``-.->``
    conditional)."""
    nodes, edges = _edges(graph)
    out = []
    for n in nodes:
        outs = [(t, c) for s, t, c, _ in edges if s == n]
        if not outs:
            out.append(f"[{_label(n)}]")
            continue
        for i, (t, c) in enumerate(outs):
            head = f"[{_label(n)}]" if i == 0 else " " * (len(_label(n)) + 2)
            out.append(f"{head} {'-.->' if c else '-->'} [{_label(t)}]")
    return "\n".join(out) + "\n"


def to_png(graph: Any, title: str = "") -> bytes:
    dot = shutil.which("dot")
    if dot is None:
        from masksearch.errors import MaskSearchError

        raise MaskSearchError("PNG drawing needs graphviz: apt-get install graphviz (or use --format mermaid|ascii|dot)")
    return subprocess.run([dot, "-Tpng"], input=to_dot(graph, title).encode(), capture_output=True,
                          check=True).stdout


def draw(graph: Any, format: str = "mermaid", out: str | Path | None = None, title: str = "") -> str | bytes:
    """Render a compiled graph (or ``"teacher"``/``"student"``) offline; write it to ``out`` if given."""
    if isinstance(graph, str):
        title = title or f"{graph} graph"
        graph = get_graph(graph)
    if format == "mermaid":
        data: str | bytes = (graph.get_graph() if hasattr(graph, "get_graph") else graph).draw_mermaid()
    elif format == "dot":
        data = to_dot(graph, title)
    elif format == "ascii":
        data = to_ascii(graph)
    elif format == "png":
        data = to_png(graph, title)
    else:
        raise ValueError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            Path(out).write_bytes(data)
        else:
            Path(out).write_text(data, encoding="utf-8")
    return data
