"""The ``edgetrim`` command line: a thin typer layer over the library.

Each command lives in ``edgetrim/commands/<area>.py`` and registers itself through ``register(app)``;
this module only assembles them and turns user errors into one-line messages (see
``edgetrim.commands._common.cli_errors``).
"""

from __future__ import annotations

import typer

from edgetrim.commands import COMMAND_MODULES

app = typer.Typer(
    name="edgetrim",
    no_args_is_help=True,
    add_completion=False,
    help="Profile targets into latency tables, compress models to a latency budget, export and re-measure.",
)

for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
