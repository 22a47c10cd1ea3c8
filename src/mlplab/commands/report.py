"""``mlplab report``: write report.md and report.html (with figures) for a run folder."""

from __future__ import annotations


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "report",
        parents=parents,
        help="write report.md and a self-contained report.html for a run",
        description="Write the figures (training loss per step, curves per epoch, confusion matrix, per-class "
        "scores), report.md and report.html (figures embedded) into RUN_DIR, from its logs and summary only: "
        "no data is loaded and no model is run. `mlplab train` does this at the end of every run unless "
        "--no-report.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `mlplab train`")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the report and figures into DIR instead (leaves RUN_DIR untouched, so it works "
        "while a training still writes RUN_DIR)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.report import write_report

    md_path, html_path = write_report(args.run_dir, out=args.out)
    print(f"wrote {md_path} and {html_path}")
    return 0
