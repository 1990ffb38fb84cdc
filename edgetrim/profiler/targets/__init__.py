"""Targets by name: ``get_target("ort-cpu", threads=1)``, ``list_targets()``, ``register_target``.

Local targets are a closed set (a dict literal below). Remote families register a name *prefix*:
the adb support registers ``"adb:"`` through :func:`register_target`. It is imported lazily, by
module name only, the first time an ``adb:`` name is asked for: ``edgetrim.profiler.adb`` either
registers itself on import or exposes ``register_targets()``, which is then called.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

from edgetrim.errors import EdgetrimError, TargetUnavailableError
from edgetrim.profiler.targets.base import LocalTarget, OpRequest, Target, TargetStatus

logger = logging.getLogger(__name__)

TargetFactory = Callable[..., Target]  # (name, *, threads, cores) -> Target


def _torch_cpu(name: str, *, threads: int, cores: Sequence[int] | None) -> Target:
    from edgetrim.profiler.targets.torch_target import TorchTarget

    return TorchTarget(name, threads=threads, cores=cores)


def _torch_cuda(name: str, *, threads: int, cores: Sequence[int] | None) -> Target:
    from edgetrim.profiler.targets.torch_target import TorchTarget

    return TorchTarget(name, threads=threads, cores=cores, cuda=True)


def _ort_cpu(name: str, *, threads: int, cores: Sequence[int] | None) -> Target:
    from edgetrim.profiler.targets.onnxruntime_target import OrtTarget

    return OrtTarget(name, threads=threads, cores=cores)


def _ort_cuda(name: str, *, threads: int, cores: Sequence[int] | None) -> Target:
    from edgetrim.profiler.targets.onnxruntime_target import OrtTarget

    return OrtTarget(name, threads=threads, cores=cores, cuda=True)


def _litert_cpu(name: str, *, threads: int, cores: Sequence[int] | None) -> Target:
    from edgetrim.profiler.targets.litert_target import LiteRtTarget

    return LiteRtTarget(name, threads=threads, cores=cores)


LOCAL_TARGETS: dict[str, TargetFactory] = {
    "torch-cpu": _torch_cpu,
    "ort-cpu": _ort_cpu,
    "litert-cpu": _litert_cpu,
    "torch-cuda": _torch_cuda,
    "ort-cuda": _ort_cuda,
}

# prefix -> factory(name, *, threads, cores); filled by register_target (e.g. "adb:")
_PREFIX_TARGETS: dict[str, TargetFactory] = {}
# prefix -> module that registers it when imported
_LAZY_PREFIX_MODULES: dict[str, str] = {"adb:": "edgetrim.profiler.adb"}


def register_target(prefix: str, factory: TargetFactory) -> None:
    """Make ``get_target(prefix + "...")`` call ``factory(name, threads=..., cores=...)``.

    Example:
        >>> register_target("sim:", lambda name, *, threads, cores: None)  # doctest: +SKIP
    """
    if not prefix or not prefix.endswith(":"):
        raise ValueError(f"target prefixes end with ':' (like 'adb:'), got {prefix!r}")
    _PREFIX_TARGETS[prefix] = factory


def _prefix_factory(name: str) -> TargetFactory | None:
    prefix = name.split(":", 1)[0] + ":"
    if prefix not in _PREFIX_TARGETS and prefix in _LAZY_PREFIX_MODULES:
        module_name = _LAZY_PREFIX_MODULES[prefix]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TargetUnavailableError(
                f"target {name}: {module_name} cannot be imported ({exc}); is the device extra installed?"
            ) from exc
        if prefix not in _PREFIX_TARGETS and callable(getattr(module, "register_targets", None)):
            module.register_targets()
        if prefix not in _PREFIX_TARGETS:
            raise TargetUnavailableError(f"target {name}: {module_name} registers no {prefix!r} targets")
    return _PREFIX_TARGETS.get(prefix)


def get_target(
    name: str, *, threads: int = 1, cores: Sequence[int] | None = None, **options: object
) -> Target:
    """The target called ``name``, set to ``threads`` threads and pinned to ``cores`` (None: as is).

    ``options`` go to prefix targets only (``adb:`` takes ``benchmark_binary``); local targets
    take none.

    Raises:
        EdgetrimError: unknown target name.
        TargetUnavailableError: known, but cannot run here (missing package, no GPU, no phone).

    Example:
        >>> t = get_target("ort-cpu", threads=1)  # doctest: +SKIP
        >>> t.info().fingerprint()  # doctest: +SKIP
        'ort-cpu|onnxruntime|AMD EPYC|threads=1'
    """
    if threads < 1:
        raise EdgetrimError(f"--threads must be >= 1, got {threads}")
    factory = LOCAL_TARGETS.get(name)
    if factory is None and ":" in name:
        factory = _prefix_factory(name)
    if factory is None:
        known = ", ".join([*LOCAL_TARGETS, "adb:SERIAL"])
        raise EdgetrimError(f"unknown target {name!r}; known targets: {known}")
    options = {k: v for k, v in options.items() if v is not None}
    if options and name in LOCAL_TARGETS:
        raise EdgetrimError(f"target {name} takes no options, got {sorted(options)}")
    return factory(name, threads=threads, cores=cores, **options)


def _adb_phones() -> list[TargetStatus]:
    """Attached phones, from ``edgetrim.profiler.adb.list_phones`` when that module is importable."""
    try:
        module = importlib.import_module("edgetrim.profiler.adb")
    except ImportError as exc:
        return [TargetStatus(name="adb:", available=False, reason=f"adb support not importable: {exc}")]
    lister = getattr(module, "list_phones", None)
    return list(lister()) if callable(lister) else []


# Extra device listings for ``edgetrim devices`` (each returns TargetStatus lines); append to extend.
DEVICE_LISTERS: list[Callable[[], list[TargetStatus]]] = [_adb_phones]


def list_devices(*, threads: int = 1, local_only: bool = False) -> list[TargetStatus]:
    """Local targets (:func:`list_targets`) plus every ``DEVICE_LISTERS`` entry (phones, ...)."""
    out = list_targets(threads=threads)
    if local_only:
        return out
    for lister in DEVICE_LISTERS:
        try:
            out.extend(lister())
        except EdgetrimError as exc:
            out.append(TargetStatus(name=getattr(lister, "__name__", "?"), available=False, reason=str(exc)))
    return out


def list_targets(*, threads: int = 1) -> list[TargetStatus]:
    """Every local target with whether it runs here, why not, and its fingerprint."""
    out = []
    for name in LOCAL_TARGETS:
        try:
            target = get_target(name, threads=threads)
            out.append(TargetStatus(name=name, available=True, info=target.info()))
        except TargetUnavailableError as exc:
            out.append(TargetStatus(name=name, available=False, reason=str(exc)))
    return out


__all__ = [
    "DEVICE_LISTERS",
    "LOCAL_TARGETS",
    "LocalTarget",
    "OpRequest",
    "Target",
    "TargetStatus",
    "get_target",
    "list_devices",
    "list_targets",
    "register_target",
]
