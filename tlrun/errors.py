"""User-facing errors: each carries one line that names the problem and the fix."""

from __future__ import annotations


class TlrunError(Exception):
    """A problem the user can fix (bad config, missing file, offline download...).

    The CLI prints ``tlrun: error: <message>`` and exits with ``exit_code``; no traceback
    unless HYDRA_FULL_ERROR=1 or TLRUN_DEBUG=1.
    """

    exit_code = 2


class ConfigError(TlrunError):
    """Invalid or unknown configuration key or value."""


class DataError(TlrunError):
    """Missing, empty or unreadable data."""


class WeightsError(TlrunError):
    """Pretrained weights that cannot be found, loaded or downloaded."""


class CheckpointError(TlrunError):
    """A checkpoint that cannot be read, or was written by another model or class count."""


class RunInterrupted(Exception):
    """SIGTERM/SIGUSR1/SIGINT arrived: training stopped after the current step, checkpoints/last.pt
    (the last completed epoch) is intact and the run can be resumed."""

    exit_code = 75  # EX_TEMPFAIL: "try again later" — what a preempted job is

    def __init__(self, signal_name: str, epochs_done: "int | None") -> None:
        when = f"after {epochs_done} completed epoch(s)" if epochs_done is not None else "outside training"
        super().__init__(f"interrupted by {signal_name} {when}")
        self.signal_name, self.epochs_done = signal_name, epochs_done
