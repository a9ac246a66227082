"""A small self-contained HTML report with plots (matplotlib, extra [eval])."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import INTENTS
from ..errors import MissingDependencyError
from .metrics import EvalReport, QueryOutcome


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: EvalReport, outcomes: Sequence[QueryOutcome]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "eval", "the HTML report of shoplens eval") from None
    plots: dict[str, str] = {}
    labelled = [o for o in outcomes if o.error is None and o.query.product_id is not None]
    if labelled:
        top = max(report.recall_at) if report.recall_at else 10
        ks = list(range(1, top + 1))
        curve = [sum(o.query.product_id in o.products[:k] for o in labelled) / len(labelled) for k in ks]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(ks, curve, marker="o")
        ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1), title="Recall@K")
        ax.grid(alpha=0.3)
        plots["Recall@K curve"] = _figure_png(fig)
        plt.close(fig)
    if report.intent_confusion is not None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.imshow(report.intent_confusion, cmap="Blues")
        ax.set_xticks(range(3), INTENTS, rotation=20)
        ax.set_yticks(range(3), INTENTS)
        ax.set(xlabel="predicted", ylabel="true", title="Intent confusion")
        for i, row in enumerate(report.intent_confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center")
        plots["Intent confusion matrix"] = _figure_png(fig)
        plt.close(fig)
    if report.per_category_recall1:
        items = sorted(report.per_category_recall1.items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(5.5, max(2.5, 0.22 * len(items))))
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set(xlabel="Recall@1", xlim=(0, 1), title="Recall@1 per category")
        plots["Per-category Recall@1"] = _figure_png(fig)
        plt.close(fig)
    return plots


def write_html(path: str | Path, report: EvalReport, outcomes: Sequence[QueryOutcome], title: str = "shoplens eval") -> Path:
    plots = _plots(report, outcomes)
    summary = report.to_dict()
    rows = [
        ("queries", summary["queries"]),
        ("unreadable", summary["failed"]),
        *((f"Recall@{k}", v) for k, v in summary["recall_at"].items()),
        ("mAP (= MRR, one relevant product)", summary["map"]),
        *((f"returned set: {k}", v) for k, v in summary["returned"].items()),
        ("intent accuracy", summary["intent_accuracy"]),
    ]
    timing_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['mean']}</td><td>{v['p50']}</td><td>{v['p95']}</td></tr>" for k, v in summary["timings_ms"].items()
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>",
        "<h2>Time per step (ms)</h2><table><tr><th>step</th><th>mean</th><th>p50</th><th>p95</th></tr>" + timing_rows + "</table>",
    ]
    for name, png in plots.items():
        body.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{png}'>")
    body.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(summary["config"], indent=2)) + "</pre>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}"
        "img{max-width:100%}</style></head><body>" + "".join(body) + "</body></html>"
    )
    out = Path(path)
    out.write_text(page, "utf-8")
    return out
