"""Uncertainty of a difference between two methods scored on the same questions.

:func:`paired_bootstrap` resamples *questions* (with replacement) and recomputes the mean per-question
difference ``b - a`` each time; the 95 % interval is the 2.5th and 97.5th percentile of those
means (the percentile bootstrap).  Pairing matters: both methods answered the same questions, so
the question-to-question variation that both share cancels out.

With ``strata`` (e.g. the benchmark of each question) the resampling is done within each stratum
and the statistic is the mean over strata of the per-stratum mean difference, which is exactly how
a table's "avg" column is formed (the mean of per-benchmark means).
"""

from __future__ import annotations

from typing import Any, Sequence

from masksearch.errors import MaskSearchError


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, strata: Sequence[Any] | None = None,
                     n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Mean of ``b - a`` over paired items, with a percentile-bootstrap ``1 - alpha`` interval.

    Returns ``{"mean", "lo", "hi", "n", "n_boot"}``.  ``a[i]`` and ``b[i]`` must be the two
    methods' scores on the same item ``i``.
    """
    import numpy as np

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise MaskSearchError(f"paired bootstrap needs two equal-length score lists, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise MaskSearchError("paired bootstrap needs at least one paired item")
    d = y - x
    groups = [np.arange(d.size)] if strata is None else _groups(strata, d.size)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for idx in groups:
        sample = rng.integers(0, idx.size, size=(n_boot, idx.size))
        boot += d[idx][sample].mean(axis=1)
    boot /= len(groups)
    mean = float(np.mean([d[idx].mean() for idx in groups]))
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": int(d.size), "n_boot": int(n_boot)}


def _groups(strata: Sequence[Any], n: int) -> list[Any]:
    import numpy as np

    if len(strata) != n:
        raise MaskSearchError(f"strata has {len(strata)} labels for {n} items")
    labels: dict[Any, list[int]] = {}
    for i, s in enumerate(strata):
        labels.setdefault(s, []).append(i)
    return [np.asarray(v) for v in labels.values()]


__all__ = ["paired_bootstrap"]
