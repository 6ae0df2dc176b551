"""A sweep's results: a row per trial (`TrialRow`), the `Sweep` the command prints, and the files written for it —
results.csv (one row per trial), best.yaml (the best trial's whole resolved config: it trains with
`hybrid train --config`), sweep.png (the metric over the first two swept keys, learning curves)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from hybrid.config.tune import TuneConfig
from hybrid.core import storage


@dataclass
class TrialRow:
    trial_id: str
    status: str  # done | stopped early | failed
    steps: int
    config: dict[str, Any]
    value: float | None  # the best value of the metric it reported
    checkpoint: str | None  # saved at that step
    error: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Sweep:
    metric: str
    mode: str
    output_dir: str  # a folder or a URI
    trials: list[TrialRow]
    best: TrialRow | None
    seconds: float
    keys: list[str]

    def to_json(self) -> dict[str, Any]:
        def row(t: TrialRow) -> dict[str, Any]:
            return {
                "trial_id": t.trial_id,
                "config": t.config,
                self.metric: t.value,
                "steps": t.steps,
                "status": t.status,
                "checkpoint": t.checkpoint,
                "error": t.error,
            }

        best = (
            None
            if self.best is None
            else {
                "trial_id": self.best.trial_id,
                "config": self.best.config,
                self.metric: self.best.value,
                "checkpoint": self.best.checkpoint,
            }
        )
        return {
            "metric": self.metric,
            "mode": self.mode,
            "trials": [row(t) for t in self.trials],
            "best": best,
            "seconds": self.seconds,
        }


def write_results(sweep: Sweep, tcfg: TuneConfig) -> None:
    out = sweep.output_dir
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial_id", "status", "steps", *sweep.keys, sweep.metric, "checkpoint", "error"])
    for t in sweep.trials:
        writer.writerow(
            [
                t.trial_id,
                t.status,
                t.steps,
                *[t.config.get(k) for k in sweep.keys],
                "" if t.value is None else f"{t.value:.6g}",
                t.checkpoint or "",
                t.error or "",
            ]
        )
    storage.write_text(storage.join(out, "results.csv"), buf.getvalue())
    if sweep.best is not None:
        cfg_path = storage.join(out, "trials", sweep.best.trial_id, "config.yaml")
        if storage.exists(cfg_path):
            storage.write_text(storage.join(out, "best.yaml"), storage.read_text(cfg_path))
    storage.write_bytes(storage.join(out, "sweep.png"), plot(sweep))


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else json.dumps(value, sort_keys=True)


def _axis(values: list[Any]) -> list[Any]:
    """A swept key's values in axis order: numbers by value, then anything else (`bpe`, `word`, null) as text — a
    categorical axis, one tick per value."""

    def order(v):
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))

    return sorted({_hashable(v) for v in values}, key=order)


def plot(sweep: Sweep) -> bytes:
    """The metric over the first two swept keys (a grid of the trials' best values) and every trial's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grid, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sweep.keys[:2]
    scored = [t for t in sweep.trials if t.value is not None]
    if len(keys) == 2 and scored:
        xs = _axis([t.config[keys[0]] for t in scored])
        ys = _axis([t.config[keys[1]] for t in scored])
        import numpy as np

        grid = np.full((len(ys), len(xs)), np.nan)
        for t in scored:
            grid[ys.index(_hashable(t.config[keys[1]])), xs.index(_hashable(t.config[keys[0]]))] = t.value
        im = ax_grid.imshow(grid, origin="lower", cmap="viridis_r" if sweep.mode == "min" else "viridis")
        ax_grid.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax_grid.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax_grid.set_xlabel(keys[0])
        ax_grid.set_ylabel(keys[1])
        for (j, i), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax_grid.text(i, j, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax_grid, label=f"best {sweep.metric}")
    else:
        ax_grid.bar([t.trial_id for t in scored], [t.value for t in scored])
        ax_grid.set_ylabel(f"best {sweep.metric}")
        ax_grid.tick_params(axis="x", rotation=45)
    for t in sweep.trials:
        if t.curve:
            label = ", ".join(f"{k.split('.')[-1]}={t.config[k]}" for k in sweep.keys)
            ax_curves.plot([s for s, _ in t.curve], [v for _, v in t.curve], marker=".", label=label)
    ax_curves.set_xlabel("step")
    ax_curves.set_ylabel(sweep.metric)
    if any(t.curve for t in sweep.trials):
        ax_curves.legend(fontsize=7)
    fig.suptitle(f"hybrid tune: {sweep.metric} ({sweep.mode})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
