"""Reports: metrics.json, predictions.csv and PNG plots."""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _clean(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return _clean(o.item())
    return o


def write_metrics(out: Path, metrics: dict, extra: dict | None = None) -> Path:
    """metrics.json (top level: the given model's figures) and predictions.csv (one row per recording)."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in metrics.items() if k != "predictions"}
    if extra:
        doc.update(extra)
    path = out / "metrics.json"
    path.write_text(json.dumps(_clean(doc), indent=1))
    with (out / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["recording", "label", "predicted", "score", "correct", "n_windows", "top3"])
        for r in metrics.get("predictions", []):
            w.writerow([r["recording"], r["label"], r["predicted"], f"{r['score']:.4f}", int(r["label"] == r["predicted"]),
                        r["n_windows"], "; ".join(f"{k}:{v:.3f}" for k, v in r["top3"])])
    return path


def plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ft = [h for h in history if h.get("stage") == "finetune"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    if ft:
        ep = [h["epoch"] for h in ft]
        ax[0].plot(ep, [h["loss"] for h in ft], marker="o")
        for key, lab in (("val_macro_roc_auc", "val macro ROC-AUC"), ("val_recording_top1", "val recording top-1")):
            pts = [(h["epoch"], h[key]) for h in ft if key in h]
            if pts:
                ax[1].plot(*zip(*pts), marker="o", label=lab)
    head = [h for h in history if h.get("stage") == "head"]
    if head:
        ax[1].axhline(head[0]["val_macro_roc_auc"], ls="--", c="gray", label="head only: ROC-AUC")
    ax[0].set(title="training loss", xlabel="epoch")
    ax[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
    ax[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(path: Path, metrics: dict, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), int)
    for r in metrics["predictions"]:
        if r["label"] in idx:
            cm[idx[r["label"]], idx[r["predicted"]]] += 1
    fig, ax = plt.subplots(figsize=(0.45 * len(classes) + 3, 0.45 * len(classes) + 2.5))
    ax.imshow(cm, cmap="Blues")
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted (mean window score)", ylabel="primary label", title="recordings: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_pr(path: Path, y: np.ndarray, scores: np.ndarray, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    n = len(classes)
    cols = min(5, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for j, c in enumerate(classes):
        ax = axes[j // cols][j % cols]
        if y[:, j].sum() > 0:
            p, r, _ = precision_recall_curve(y[:, j], scores[:, j])
            ax.plot(r, p)
        ax.set_title(c, fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=6)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("per-class precision (y) vs recall (x), windows")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_plots(out: Path, metrics: dict, classes: list[str], y: np.ndarray, scores: np.ndarray,
                history: list[dict] | None = None) -> None:
    try:
        if history:
            plot_curves(out / "training_curves.png", history)
        plot_confusion(out / "confusion_matrix.png", metrics, classes)
        plot_pr(out / "pr_curves.png", y, scores, classes)
    except ImportError as exc:
        log.warning("no plots: %s", exc)


def write_report(out: Path, m_int8: dict, m_float: dict, history, prepared, float_scores, int8_scores,
                 timings: dict | None = None, plots: bool = True) -> Path:
    from .evaluate import summary

    extra = {"model": "int8", "float": summary(m_float),
             "float_per_class": m_float["per_class"],
             "int8_drop": {k: m_float[k] - m_int8[k] for k in ("macro_roc_auc", "recording_top1_accuracy",
                                                               "macro_average_precision")},
             "history": history, "timings_s": timings or {}}
    path = write_metrics(out, m_int8, extra)
    if plots:
        write_plots(out, m_int8, prepared.ds.classes, prepared.val_windows.y, int8_scores, history)
    log.info("report in %s", out)
    return path


def markdown(m_int8: dict, m_float: dict | None = None, anchor: dict | None = None) -> str:
    """The evaluation as Markdown tables (overall, then per class for the int8 model)."""
    cols = ("macro_roc_auc", "macro_average_precision", "cmap_padded", "recording_top1_accuracy")
    lines = ["| model | macro ROC-AUC | macro AP | cmAP (padded) | recording top-1 |", "|---|---|---|---|---|"]
    for name, m in (("float (Keras)", m_float), ("int8 (LiteRT, what the recorder runs)", m_int8),
                    ("anchor: BirdNET V2.4 embeddings + logistic regression", anchor)):
        if m:
            lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    lines += ["", "| species | windows | recordings | ROC-AUC | AP | F1 @0.5 | threshold | P / R / F1 @threshold |",
              "|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    for r in m_int8["per_class"]:
        lines.append(f"| {r['label']} | {r['support_windows']} | {r.get('support_recordings', '')} | {f(r['roc_auc'])} | "
                     f"{f(r['average_precision'])} | {f(r['f1_at_0.5'])} | {r['threshold']:.2f} | "
                     f"{f(r['precision_at_threshold'])} / {f(r['recall_at_threshold'])} / {f(r['f1_at_threshold'])} |")
    return "\n".join(lines) + "\n"
