"""Shared CLI plumbing: one-line errors, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer

from edgetrim.errors import EdgetrimError

F = TypeVar("F", bound=Callable[..., Any])

DriftToleranceOption = Annotated[
    float,
    typer.Option(
        "--drift-tolerance",
        help="with --resume: start over (old file kept as OUT.stale.json) when a quarter of a sample "
        "of stored points now time over 1 + this times slower (or faster); 0 never starts over",
    ),
]


def drift_tolerance(value: float) -> float | None:
    """``--drift-tolerance`` as ``ProfileConfig.drift_tolerance`` (0 -> None: never start over)."""
    if value < 0:
        raise EdgetrimError(f"--drift-tolerance must be >= 0 (0: never start over), got {value}")
    return value or None


def cli_errors(fn: F) -> F:
    """Turn an ``EdgetrimError`` into ``error: <message>`` on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgetrimError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished work is saved; re-run with --resume to continue", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Print one JSON object on stdout (the ``--json`` contract: nothing else on stdout)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def parse_int_list(text: str | None, *, what: str) -> tuple[int, ...] | None:
    """Parse ``"1,3,64,64"`` into a tuple of ints, or raise a one-line error."""
    if text is None or text == "":
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise EdgetrimError(f"{what} must be comma-separated integers like 1,3,64,64, got {text!r}") from None


def parse_enum(value: str, enum_type: Any, flag: str) -> Any:
    """``enum_type(value)``, or a one-line error listing the accepted values of ``flag``."""
    try:
        return enum_type(value)
    except ValueError:
        raise EdgetrimError(
            f"{flag} must be one of {', '.join(e.value for e in enum_type)}, got {value!r}"
        ) from None


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the one ``--json`` object: converters and tracers print progress there.

    Redirects both Python's ``sys.stdout`` and file descriptor 1, because native code (litert-torch's
    converter, onnxruntime) writes to the descriptor directly.
    """
    sys.stdout.flush()
    saved = None
    with contextlib.suppress(Exception):
        sys.__stdout__.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            for stream in (sys.stdout, sys.__stdout__):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved, 1)
            os.close(saved)
