"""Shared CLI plumbing: one-line errors, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from edgetrim.errors import EdgetrimError

F = TypeVar("F", bound=Callable[..., Any])


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
