"""GRPO curves: every trainer log entry appended to ``grpo_log.jsonl`` and plotted (reward, per
reward term, rollout length) to ``grpo_curves.png``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

# --------------------------------------------------------------------------- curves


def curves_callback(output_dir: str) -> Any:
    from transformers import TrainerCallback

    class CurvesCallback(TrainerCallback):
        """Appends every log entry to ``grpo_log.jsonl`` and re-plots ``grpo_curves.png``."""

        def __init__(self) -> None:
            self.path = Path(output_dir) / "grpo_log.jsonl"
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if not logs or not state.is_world_process_zero:
                return
            row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            self.rows.append(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero and self.rows:
                plot_curves(self.rows, Path(output_dir) / "grpo_curves.png")

    return CurvesCallback()


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Reward (total and per term) and completion-length curves over steps, as a PNG."""
    rows = [r for r in rows if "reward" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, [r["reward"] for r in rows], label="reward (weighted)", lw=2)
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax1.plot(steps, [r.get(key, math.nan) for r in rows], label=key.split("/")[1], lw=1)
    ax1.set_xlabel("step"), ax1.set_ylabel("mean reward"), ax1.legend(fontsize=8), ax1.set_title("GRPO reward")
    for key, label in (("completions/mean_length", "model tokens / rollout"), ("rollout/env_tokens", "env tokens / rollout")):
        if any(key in r for r in rows):
            ax2.plot(steps, [r.get(key, math.nan) for r in rows], label=label)
    ax2.set_xlabel("step"), ax2.set_ylabel("tokens"), ax2.legend(fontsize=8), ax2.set_title("rollout length")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


