"""SAFS: searching activation functions (and their scales) for highly sparse networks.

Loni et al., arXiv 2305.10964. See :mod:`.pipeline` for the whole method, :mod:`.activations` for the
operator registry, :mod:`.surgery` for activation-site rewriting, :mod:`.search` (stage 1) and
:mod:`.hpo` (stage 2).
"""

from edgetrim.compress.safs.activations import OPS, SEARCH_SPACE, BakedActivation, ParametricActivation
from edgetrim.compress.safs.pipeline import SafsConfig, SafsReport, pretrain_dense_, run_safs
from edgetrim.compress.safs.search import SearchAlgorithm, SearchConfig, search
from edgetrim.compress.safs.surgery import replace_activations

__all__ = [
    "OPS",
    "SEARCH_SPACE",
    "BakedActivation",
    "ParametricActivation",
    "SafsConfig",
    "SafsReport",
    "SearchAlgorithm",
    "SearchConfig",
    "pretrain_dense_",
    "replace_activations",
    "run_safs",
    "search",
]
