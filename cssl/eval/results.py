"""Names of evaluation results, shared by ``linear_eval.py`` (the ``eval/...`` keys it writes into the
pretraining run's W&B summary) and :mod:`cssl.report` (the columns it joins to pretraining runs)."""

from __future__ import annotations

import math
from typing import Any


def result_prefix(mode: str, *, init: str = "pretrained", tag: str | None = None) -> str:
    """The name of an evaluation's accuracies: ``linear``, ``finetune``, ``finetune_random`` (fine-tuning from
    a random initialisation), ``knn``; a label subset adds its tag.

    Example:
        >>> result_prefix("finetune", tag="frac0.01"), result_prefix("finetune", init="random")
        ('finetune_frac0.01', 'finetune_random')
    """
    name = f"{mode}_random" if init == "random" else mode
    return f"{name}_{tag}" if tag else name


def knn_cell(k: int, t: float) -> str:
    """``k20_t0.07``: one cell of a kNN grid."""
    return f"k{int(k)}_t{float(t):g}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The ``eval/...`` keys of an evaluation's summary, e.g. ``eval/linear_top1``,
    ``eval/finetune_top1_frac0.01`` (the subset's tag last, so that a sweep's columns sort by metric),
    ``eval/knn_top1_k20_t0.07`` for every cell of a kNN grid.

    Example:
        >>> eval_metrics({"mode": "finetune", "init": "pretrained", "subset": {"tag": "frac0.1"}, "top1": 0.5})
        {'eval/finetune_top1_frac0.1': 0.5}
    """
    mode = str(summary.get("mode"))
    tag = (summary.get("subset") or {}).get("tag")
    name = result_prefix(mode, init=str(summary.get("init", "pretrained")))
    suffix = f"_{tag}" if tag else ""
    out: dict[str, float] = {}
    for key in ("top1", "top5", "top1_best", "top5_best"):
        if (value := _number(summary.get(key))) is not None:
            out[f"eval/{name}_{key}{suffix}"] = value
    for cell, values in (summary.get("grid") or {}).items():
        for key in ("top1", "top5"):
            if (value := _number(values.get(key))) is not None:
                out[f"eval/{name}_{key}_{cell}{suffix}"] = value
    return out
