"""The ``edgetrim`` command line: a thin typer layer over the library.

Each command lives in ``edgetrim/commands/<area>.py`` and registers itself through ``register(app)``;
this module only assembles them and turns user errors into one-line messages (see
``edgetrim.commands._common.cli_errors``).
"""

from __future__ import annotations

import logging
import warnings

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


# Third-party notices that say nothing about the user's model or target, printed on every export:
# torch.onnx registering torchvision ops that are not installed, a pytree deprecation inside the
# exporter, torchao's optional CUDA kernels and its enum registrations (imported through transformers).
_QUIET_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.utils._pytree",
    "torchao",
    # "Evaluation failed" for shape ops the exporter's constant folder leaves unfolded (BERT's
    # position ids); the graph is still exported and checked for parity
    "onnxscript.optimizer._constant_folding",
)
_QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)",)


def _quiet_third_party_notices() -> None:
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


@app.callback()
def _before_every_command() -> None:
    _quiet_third_party_notices()


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
