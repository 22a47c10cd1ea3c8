"""Signals while training: SIGINT and SIGTERM stop a run cleanly at the end of a step."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """While training, SIGINT and SIGTERM only raise a flag: the current step finishes, the
    state is saved and the run stops cleanly. A second SIGINT stops at once."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous: dict[int, object] = {}

    def handler(self, signum, frame):
        if self.trainer._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer._signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handler)
        return self

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        return False
