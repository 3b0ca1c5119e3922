"""SIGTERM/SIGINT as a flag the train loop polls, so a stop saves a checkpoint first.

    stopper = StopSignal()          # installs the handlers (main thread only)
    if stopper.should_stop(step): ...save, stopper.received names the signal...
    stopper.restore()               # the previous handlers back

With several processes, jax.distributed's preemption notifier (SIGTERM) gives every
process the same step to stop at.
"""
from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class StopSignal:
    def __init__(self):
        self.received = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a test runner): no handler
                pass

    def _handler(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.received = self.received or "SIGTERM"
                    return True
            except RuntimeError:
                pass
            return False
        return self.received is not None

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
