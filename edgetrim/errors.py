"""User-facing errors.

Every error a user can cause (bad file, bad flag, unavailable target, impossible budget) is an
``EdgetrimError`` whose message is one line saying what is wrong and what to do. The CLI prints that
line and exits non-zero; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgetrimError(Exception):
    """Base class of errors caused by input, configuration or environment (not by a bug)."""

    exit_code = 2


class TableError(EdgetrimError):
    """A latency table is missing, corrupt, too new, or does not fit the request."""


class TargetUnavailableError(EdgetrimError):
    """The requested target cannot run here (missing package, no GPU, no phone)."""


class ModelSpecError(EdgetrimError):
    """A ``path.py:fn`` / ``package.module:fn`` model spec cannot be imported or called."""


class UncoveredOpError(EdgetrimError):
    """A model contains a layer that no table context covers."""


class BudgetError(EdgetrimError):
    """A latency / FLOPs budget cannot be met.

    ``smallest``, when known, is the smallest reachable value in the budget's own unit, so that a
    caller can choose a budget that can be met.
    """

    def __init__(self, message: str, *, smallest: float | None = None) -> None:
        super().__init__(message)
        self.smallest = smallest


class ExportError(EdgetrimError):
    """Export or parity check failed."""


class DeviceError(EdgetrimError):
    """A phone / adb problem: unplugged, unauthorized, missing binary, full storage."""
