"""Compression to a latency budget with the l1/l2 latency surrogate (Nasery et al., arXiv 2306.05785).

Public entry points: :func:`edgetrim.compress.api.compress` (model + table + data -> smaller model and
:class:`~edgetrim.compress.api.CompressionReport`), :class:`~edgetrim.compress.config.CompressConfig`,
:func:`edgetrim.compress.graph.find_channel_groups` / :func:`~edgetrim.compress.graph.materialize_channels`.

Recipes (grouping x penalty x schedule), all trained with projection ``alpha <- max(0, alpha)``:

=====================================  ==========================  =================================
goal                                   grouping (``--blocks``)     penalty / schedule
=====================================  ==========================  =================================
fit a latency budget on a target       channels + heads (prune)    Eq. 6 latency, lambda by dual ascent
fit a FLOPs budget                     channels + heads (prune)    Eq. 4 FLOPs, lambda by dual ascent
shrink FFN / 1x1 layers                rank (lowrank[, prune])     Eq. 6 on T(d_in, s) + T(s, d_out)
smaller weights at equal accuracy      per-layer bits (quant)      storage bits, fixed ``bits_lambda``
unstructured sparsity                  weights (sparse)            l1/l2 of vec(W), fixed weight
ablation of section 3.2                channels                    Eq. 3 plain l1 (``regularizer=l1``)
=====================================  ==========================  =================================

Modules never import ``edgetrim.profiler`` or ``edgetrim.deploy`` (tests/test_layering.py).
"""
