"""SIGTERM / SIGUSR1 (SLURM and cloud preemption) and Ctrl-C, at any point of a job.

Two modes, one set of handlers:

* **deferred** (while the engine fits): the signal sets a flag and training stops after the current
  step, once the step's state is consistent; a second Ctrl-C stops at once (KeyboardInterrupt).
* **immediate** (everywhere else in a job: data loading, a teacher stage's setup, test evaluation,
  plots): the signal raises ``RunInterrupted`` right away, so the runner records the interruption in
  ``metrics.json`` and exits 75 with the resume command.

Handlers are installed only from the main thread (where Python delivers signals) and the previous
handlers come back when the outermost scope ends.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import Any, Iterator, Optional

from tlrun.errors import RunInterrupted

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


class Interrupts:
    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._modes: list[str] = []  # innermost last: "immediate" or "deferred"
        self._previous: dict = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._modes and self._modes[-1] == "shielded":
            log.warning("%s received again: tlrun is already stopping", name)
            return
        if self._modes and self._modes[-1] == "deferred":
            if self.received and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.received = name
            log.warning("%s received: stopping after the current step (checkpoints/last.pt keeps the last epoch)",
                        name)
            return
        self.received = name
        raise RunInterrupted(name, None)

    @contextlib.contextmanager
    def _scope(self, mode: str) -> Iterator["Interrupts"]:
        outermost = not self._modes
        if outermost:
            if mode != "shielded":
                self.received = None
            if threading.current_thread() is threading.main_thread():
                self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        self._modes.append(mode)
        try:
            yield self
        finally:
            self._modes.pop()
            if outermost:
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)
                self._previous = {}

    def shielded(self) -> contextlib.AbstractContextManager:
        """While the process records an interruption and stops, further signals are only logged."""
        return self._scope("shielded")

    @contextlib.contextmanager
    def before_job(self) -> Iterator[None]:
        """Around the whole command: before the job starts (imports, composing, Hydra's setup) SIGTERM or
        SIGUSR1 ends the process at once with exit 75 and one line, since nothing was written that a resume
        could continue; the job's own scope takes over inside."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, _frame: Any) -> None:
            print(f"tlrun: interrupted by {signal.Signals(signum).name} before the run started; nothing to "
                  "resume: run the command again", file=sys.stderr)
            raise SystemExit(RunInterrupted.exit_code)

        previous = {sig: signal.signal(sig, stop) for sig in SIGNALS if sig != signal.SIGINT}
        try:
            yield
        except SystemExit as exit_:
            if exit_.code == RunInterrupted.exit_code:  # stopping after an interruption: a repeated signal
                previous = {sig: signal.SIG_IGN for sig in previous}  # must not kill the exit with 143
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def job(self) -> contextlib.AbstractContextManager:
        """A whole job: a signal outside training interrupts at once."""
        return self._scope("immediate")

    @contextlib.contextmanager
    def deferred(self) -> Iterator["Interrupts"]:
        """Training steps: a signal is noted and acted on at the next step boundary. A signal noted but not
        yet acted on when the block ends interrupts there (outside a job, e.g. a script's Engine, too)."""
        with self._scope("deferred"):
            yield self
        if self.received and self._modes and self._modes[-1] == "immediate":
            raise RunInterrupted(self.received, None)


INTERRUPTS = Interrupts()
