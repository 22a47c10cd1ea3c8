"""``mlplab presets``: the shipped configurations."""

from __future__ import annotations


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "presets",
        parents=parents,
        help="list the shipped configurations (use one with `mlplab train --preset NAME`)",
        description="List the presets shipped with mlplab, or show one in full.",
    )
    parser.add_argument("name", nargs="?", help="show this preset's options")
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.config import load_preset, preset_description, preset_names, preset_text

    if args.name:
        print(preset_text(args.name).rstrip())  # ConfigError (exit 2) for an unknown name
        return 0
    for name in preset_names():
        options = load_preset(name)
        summary = " ".join(f"{key}={value}" for key, value in options.items())
        print(f"{name}\n  {' '.join(preset_description(name).split())}\n  options: {summary}\n")
    print("Use one with: mlplab train --preset NAME [options that override it]")
    return 0
