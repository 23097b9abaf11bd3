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
