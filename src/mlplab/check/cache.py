"""The cache check shared by every module with a forward/backward pair.

A module used twice, forward(X₁) backward(dY₁) then forward(X₂) backward(dY₂), must give what a
fresh module gives for (X₂, dY₂) alone. The learner's own fresh modules are the yardstick, so
the check isolates the cache from any error in the formulas. When the reused module instead
matches a fresh one run as forward(X₁) backward(dY₂), its backward used the first call's values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplab.check.arrays import close
from mlplab.check.context import LearnerError, Row


def check_cache(
    row: Row, make: Callable, step: Callable, names: list[str], x1, dy1, x2, dy2, consequence: str | None = None
) -> None:
    """``make()`` builds a fresh module; ``step(module, x, dy)`` runs forward then backward and
    returns copies of the outputs named in ``names`` (Y, dX, parameter gradients).
    ``consequence``: a failure is explained by earlier ones (their text), so it names no mistake."""

    def run(*pairs):
        module = make()
        result = None
        for x, dy in pairs:
            result = step(module, x.copy(), dy.copy())
        return result

    try:
        reused = run((x1, dy1), (x2, dy2))
        fresh = run((x2, dy2))
        stale = run((x1, dy2))
        first = run((x1, dy1))
    except LearnerError as exc:
        row.error(exc)
        return
    wrong = [i for i, (a, b) in enumerate(zip(reused, fresh)) if not _same(a, b)]
    if not wrong:
        return
    parts = [names[i] for i in wrong]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    verb = "equals" if len(wrong) == 1 else "equal"
    differ = "differs" if len(wrong) == 1 else "differ"
    if consequence:
        row.fail(
            f"after a second forward/backward pair your {listed} {differ} from what a fresh module gives "
            f"for the second batch alone ({consequence})",
            kind="consequence",
        )
        return
    if all(_same(reused[i], stale[i]) for i in wrong):
        row.fail(
            f"after forward(X₁), backward(dY₁), forward(X₂), backward(dY₂), your {listed} {verb} what "
            f"forward(X₁), backward(dY₂) gives: the second backward used values from the first forward call",
            "stale-cache",
        )
        return
    if all(_same(reused[i], np.asarray(fresh[i]) + np.asarray(first[i])) for i in wrong):
        row.fail(
            f"after two forward/backward pairs your {listed} {verb} the sum of both pairs' gradients: "
            f"backward adds to the gradients instead of overwriting them"
        )
        return
    row.fail(
        f"after a second forward/backward pair your {listed} {differ} from what a fresh module gives "
        f"for the second batch alone"
    )


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and close(a, b, 1e-10)
