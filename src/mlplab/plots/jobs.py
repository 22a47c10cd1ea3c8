"""Figures drawn as a batch: the report queues its figures while it writes the text, then draws
them all at once, in forked worker processes where there are cores for them."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


class FigureJobs:
    """Figures collected one by one and drawn together by :meth:`draw`.

    Drawing is mostly text layout and PNG encoding in one thread, so the figures are drawn in
    forked worker processes, one per core (the children inherit the already imported matplotlib).
    Without ``fork`` (Windows, macOS defaults), on one core, or if the pool cannot start, they are
    drawn here one after another; the files are the same either way."""

    def __init__(self, parallel: bool = True):
        self.parallel = parallel
        self.jobs: list[tuple] = []

    def add(self, plot, *args, **kwargs) -> None:
        """Queue ``plot(*args, **kwargs)``, a module-level function of :mod:`mlplab.plots`."""
        self.jobs.append((plot, args, kwargs))

    def workers(self) -> int:
        if not self.parallel or len(self.jobs) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return 1
        return min(
            len(self.jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )

    def draw(self) -> None:
        workers = self.workers()
        jobs, self.jobs = self.jobs, []
        if workers > 1 and self._draw_in_workers(jobs, workers):
            return
        for plot, args, kwargs in jobs:
            plot(*args, **kwargs)  # each plot function saves its own figure

    @staticmethod
    def _draw_in_workers(jobs, workers: int) -> bool:
        """Draw ``jobs`` in a pool of forked processes; False when the pool could not start or
        a worker died (the caller then draws them all here: each file is written atomically).
        An error raised by a plot function itself is raised here."""
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                # Largest first, so the longest figure does not start last.
                futures = [pool.submit(_draw, *job) for job in sorted(jobs, key=_cost, reverse=True)]
        except OSError:  # fork refused (process or memory limits)
            return False
        errors = [future.exception() for future in futures]
        if any(isinstance(error, BrokenProcessPool) for error in errors):
            return False
        for error in errors:
            if error is not None:
                raise error
        return True


def _draw(plot, args, kwargs) -> None:
    # In a worker: the plot function saves its figure; returning None spares pickling the Figure back.
    plot(*args, **kwargs)


def _cost(job) -> int:
    from mlplab.plots.gradflow import plot_gradients
    from mlplab.plots.metrics import plot_confusion

    return {plot_confusion: 3, plot_gradients: 2}.get(job[0], 1)
