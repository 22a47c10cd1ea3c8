"""The accuracy frontier: test accuracy against wall time, one point per finished run.

    python benchmarks/frontier.py benchmarks/frontier/runs --out docs/figures/frontier.png --table

reads every ``summary.json`` under the folders given (with its ``config.json`` beside it), and
draws each run as a point: wall time in minutes on x, test accuracy on y. The time is the
whole command's when the run folder holds ``time.txt`` (the output of ``/usr/bin/time -v -o
RUN/time.txt mlplab train ...``: its "Elapsed (wall clock) time" line), else the run's own
``wall_seconds`` (data loading to test evaluation; without Python's start-up and the report).

A run whose folder is named ``<preset>-seed<N>`` (``cifar10-best-seed42``) is a final run of that
preset and is marked; ``...-torch-seed<N>`` marks the PyTorch twin's run of it. Every other run is
a search run. The step line is the frontier itself: the best test accuracy reached by any run
that took at most that long. ``--table`` prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PRESET_RUN = re.compile(r"^(?P<preset>.+?)(?P<torch>-torch)?-seed(?P<seed>\d+)$")
COLOURS = {"reference": "tab:purple", "cifar10-1min": "tab:green", "cifar10-5min": "tab:orange", "cifar10-best": "tab:red"}


def elapsed_seconds(time_file: Path) -> float | None:
    """The "Elapsed (wall clock) time (h:mm:ss or m:ss): 4:03.21" line of ``/usr/bin/time -v``."""
    for line in time_file.read_text().splitlines():
        if "Elapsed (wall clock) time" in line:
            clock = line.rsplit(" ", 1)[-1]
            seconds = 0.0
            for part in clock.split(":"):
                seconds = 60 * seconds + float(part)
            return seconds
    return None


def load_runs(folders: list[Path]) -> list[dict]:
    runs = []
    for folder in folders:
        for summary_file in sorted(Path(folder).rglob("summary.json")):
            run_dir = summary_file.parent
            summary = json.loads(summary_file.read_text())
            if summary.get("status", "completed") != "completed" or summary.get("test_accuracy") is None:
                continue
            config_file = run_dir / "config.json"
            options = json.loads(config_file.read_text()).get("options", {}) if config_file.exists() else {}
            time_file = run_dir / "time.txt"
            command_seconds = elapsed_seconds(time_file) if time_file.exists() else None
            match = PRESET_RUN.match(run_dir.name)
            runs.append(
                {
                    "name": run_dir.name,
                    "preset": match["preset"] if match else None,
                    "seed": int(match["seed"]) if match else options.get("seed"),
                    "backend": summary.get("backend", options.get("backend", "numpy")),
                    "hidden_dims": options.get("hidden_dims"),
                    "epochs": summary.get("epochs_run", options.get("epochs")),
                    "best_val_accuracy": summary.get("best_val_accuracy"),
                    "test_accuracy": summary["test_accuracy"],
                    "seconds": command_seconds if command_seconds is not None else summary["wall_seconds"],
                    "whole_command": command_seconds is not None,
                }
            )
    return runs


def frontier(runs: list[dict]) -> list[tuple[float, float]]:
    """(seconds, best test accuracy so far) at each run that raised the best, by time."""
    points, best = [], float("-inf")
    for run in sorted(runs, key=lambda r: r["seconds"]):
        if run["test_accuracy"] > best:
            best = run["test_accuracy"]
            points.append((run["seconds"], best))
    return points


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    search = [r for r in runs if r["preset"] is None]
    ax.scatter(
        [r["seconds"] / 60 for r in search],
        [100 * r["test_accuracy"] for r in search],
        s=18,
        color="0.55",
        label=f"search runs ({len(search)})",
        zorder=2,
    )
    for preset in sorted({r["preset"] for r in runs if r["preset"]}):
        colour = COLOURS.get(preset, "tab:blue")
        for torch_run in (False, True):
            chosen = [r for r in runs if r["preset"] == preset and (r["backend"] == "torch") == torch_run]
            if chosen:
                ax.scatter(
                    [r["seconds"] / 60 for r in chosen],
                    [100 * r["test_accuracy"] for r in chosen],
                    s=60 if not torch_run else 50,
                    marker="o" if not torch_run else "^",
                    facecolor=colour if not torch_run else "none",
                    edgecolor=colour,
                    label=f"{preset} ({'PyTorch twin' if torch_run else 'NumPy'}, {len(chosen)} run{'s' * (len(chosen) > 1)})",
                    zorder=3,
                )
    line = frontier(runs)
    if line:
        xs = [p[0] / 60 for p in line] + [max(r["seconds"] for r in runs) / 60]
        ys = [100 * p[1] for p in line] + [100 * line[-1][1]]
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="frontier (best so far)", zorder=1)
    for minutes in (1, 5, 15):
        ax.axvline(minutes, color="0.8", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ticks = [t for t in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30) if t <= 1.2 * max(r["seconds"] for r in runs) / 60]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wall time of the whole command (minutes, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MLPs on CIFAR-10, 2 CPU cores: what each minute buys")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def table(runs: list[dict]) -> str:
    rows = ["| run | backend | hidden | epochs | val | test | time |", "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: r["seconds"]):
        hidden = "-".join(str(w) for w in r["hidden_dims"] or [])
        val = f"{100 * r['best_val_accuracy']:.2f} %" if r["best_val_accuracy"] is not None else "–"
        rows.append(
            f"| {r['name']} | {r['backend']} | {hidden} | {r['epochs']} | {val} | "
            f"{100 * r['test_accuracy']:.2f} % | {r['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched for run folders (summary.json)")
    parser.add_argument("--out", type=Path, default=Path("frontier.png"), help="the figure (PNG)")
    parser.add_argument("--table", action="store_true", help="also print a Markdown table of the runs")
    args = parser.parse_args(argv)
    runs = load_runs(args.folders)
    if not runs:
        print(f"frontier.py: no finished run (summary.json) under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 1
    plot(runs, args.out)
    print(f"{len(runs)} runs -> {args.out}")
    if args.table:
        print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
