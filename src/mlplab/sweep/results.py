"""A sweep's results from the study as it stands: the rows of results.csv (best first), the
best trial (by validation accuracy only), sweep.json, and the table printed at the end.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path

from mlplab.plots.sweep import plot_sweep
from mlplab.sweep.queue import _done, _states
from mlplab.sweep.space import Dimension, _format_value
from mlplab.sweep.storage import default_storage, redact
from mlplab.sweep.worker import worker_threads

RESULT_COLUMNS_BEFORE = ("trial",)
RESULT_COLUMNS_AFTER = ("val_accuracy", "test_accuracy", "best_epoch", "seconds", "run_dir", "state", "error")


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: ``rows`` as in results.csv (best first), ``best`` (the
    row with the highest validation accuracy, or None) and the written files."""

    out: Path
    study_name: str
    storage: str
    rows: list[dict]
    best: dict | None
    summary: dict
    trained: int = 0
    files: list[Path] = field(default_factory=list)


def collect_rows(study, spec: dict, out: Path) -> list[dict]:
    """One row per finished trial (complete or failed), sorted by validation accuracy, best
    first (failed trials last); ties go to the earlier trial."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if "slot" not in trial.user_attrs or not _done(trial):
            continue
        attrs = trial.user_attrs
        run_dir = attrs.get("run_dir", "")
        # A worker records its run folder under --out as it was given (relative when it was), so
        # both sides are resolved before comparing; a folder on another machine stays as recorded.
        with contextlib.suppress(ValueError):
            run_dir = str(Path(run_dir).resolve().relative_to(out.resolve())) if run_dir else ""
        row = {"trial": trial.number}
        for dimension in dimensions:
            row[dimension.flag] = trial.params.get(dimension.name)
        row.update(
            {
                "val_accuracy": trial.value if trial.state == _states().COMPLETE else None,
                "test_accuracy": attrs.get("test_accuracy"),
                "best_epoch": attrs.get("best_epoch"),
                "seconds": attrs.get("seconds"),
                "run_dir": run_dir,
                "state": trial.state.name,
                "error": attrs.get("error", ""),
            }
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["val_accuracy"] is None, -(r["val_accuracy"] or 0.0), r["trial"]))
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The row with the highest validation accuracy (the earliest trial on a tie). Test
    accuracy plays no part."""
    complete = [r for r in rows if r["val_accuracy"] is not None]
    return max(complete, key=lambda r: (r["val_accuracy"], -r["trial"])) if complete else None


def write_results(study, spec: dict, out: Path, *, storage_url: str, jobs: int | None = None) -> SweepResult:
    """results.csv, sweep.json and sweep.png in ``out``, from the study as it stands."""
    from mlplab.training.checkpoint import atomic_write, write_json_atomic

    out = Path(out)
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    rows = collect_rows(study, spec, out)
    best = best_row(rows)
    columns = [*RESULT_COLUMNS_BEFORE, *(d.flag for d in dimensions), *RESULT_COLUMNS_AFTER]

    def write_csv(handle):
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        swept = {d.flag for d in dimensions}
        for row in rows:
            writer.writerow(
                {k: ("" if v is None else _format_value(v, exact=True) if k in swept else v) for k, v in row.items()}
            )

    atomic_write(out / "results.csv", write_csv, mode="w")
    states = _states()
    trials = study.get_trials(deepcopy=False)
    counts = {
        "planned": spec["trials"],
        "complete": sum(1 for t in trials if "slot" in t.user_attrs and t.state == states.COMPLETE),
        "failed": sum(
            1 for t in trials if "slot" in t.user_attrs and t.state == states.FAIL and "error" in t.user_attrs
        ),
        "queued": sum(1 for t in trials if t.state == states.WAITING),
        "running": sum(1 for t in trials if t.state == states.RUNNING),
        "retried": sum(1 for t in trials if "retry_of" in t.user_attrs),
    }
    summary = {
        "study": study.study_name,
        "storage": redact(storage_url),
        "out": str(out),
        "search": spec["search"],
        "dimensions": [d.describe() for d in dimensions],
        "base_options": spec["base"],
        "seed": spec["seed"],
        "trials": counts,
        "selection": "highest best-epoch validation accuracy; test accuracy is reported, never used to choose",
        "best": None
        if best is None
        else {
            "trial": best["trial"],
            "params": {d.flag: best[d.flag] for d in dimensions},
            "val_accuracy": best["val_accuracy"],
            "test_accuracy": best["test_accuracy"],
            "best_epoch": best["best_epoch"],
            "run_dir": best["run_dir"],
        },
        "jobs": jobs,
        "blas_threads_per_worker": worker_threads(jobs) if jobs and jobs > 1 else None,
        "files": [
            "results.csv",
            "sweep.png",
            "sweep.json",
            "trials/",
            "study.db" if storage_url == default_storage(out) else None,
        ],
    }
    summary["files"] = [f for f in summary["files"] if f]
    write_json_atomic(out / "sweep.json", summary)
    files = [out / "results.csv", out / "sweep.json"]
    plot_sweep(
        rows,
        sweep_panels(dimensions),
        out / "sweep.png",
        best=best,
        title=f"Sweep {study.study_name}: validation accuracy",
    )
    files.append(out / "sweep.png")
    return SweepResult(
        out=out, study_name=study.study_name, storage=storage_url, rows=rows, best=best, summary=summary, files=files
    )


def sweep_panels(dimensions: list[Dimension]) -> list[dict]:
    """The swept options as the plain panel descriptions :func:`mlplab.plots.plot_sweep` draws."""
    return [
        {
            "name": d.name,
            "flag": d.flag,
            "kind": d.kind,
            "values": tuple(d.values),
            "labels": tuple(_format_value(v) for v in d.values),
            "low": d.low,
            "high": d.high,
        }
        for d in dimensions
    ]


def format_results(result: SweepResult, spec: dict, limit: int = 20) -> str:
    """The results table (best first, at most ``limit`` rows) and the best configuration."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    header = ["trial", *(d.flag for d in dimensions), "val acc", "test acc", "epoch", "seconds", "state"]

    def number(value, spec: str) -> str:
        return "" if value is None else format(value, spec)

    lines = []
    for row in result.rows[:limit]:
        lines.append(
            [
                str(row["trial"]),
                *(_format_value(row[d.flag]) for d in dimensions),
                number(row["val_accuracy"], ".4f"),
                number(row["test_accuracy"], ".4f"),
                "" if row["best_epoch"] is None else str(row["best_epoch"]),
                number(row["seconds"], ".1f"),
                row["state"],
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    text = [""]
    if lines:
        text.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        text += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    if len(result.rows) > limit:
        text.append(f"... {len(result.rows) - limit} more in results.csv")
    for row in result.rows:
        if row["error"]:
            text.append(f"trial {row['trial']} failed: {row['error']}")
    best = result.best
    if best is None:
        text.append("no trial has finished yet")
    else:
        values = ", ".join(f"{d.flag}={_format_value(best[d.flag])}" for d in dimensions)
        text.append(
            f"\nbest (by validation accuracy): trial {best['trial']} ({values}): validation accuracy "
            f"{best['val_accuracy']:.4f}, test accuracy {best['test_accuracy']:.4f}"
        )
        text.append(f"  run folder: {result.out / best['run_dir']}")
    text.append(f"written to {result.out}: results.csv, sweep.png, sweep.json")
    return "\n".join(text)
