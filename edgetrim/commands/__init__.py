"""CLI command modules, one per area. Each exposes ``register(app: typer.Typer) -> None``.

Add a module here to make its commands part of ``edgetrim``.
"""

from __future__ import annotations

from types import ModuleType

from edgetrim.commands import adb_device, compress, deploy, profiling, safs_grow, sparse, tables

COMMAND_MODULES: list[ModuleType] = [adb_device, compress, deploy, profiling, safs_grow, sparse, tables]
