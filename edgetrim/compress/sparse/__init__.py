"""Sparse training: schedules, criteria, allocation, one training loop with method presets.

Entry point: ``sparsify(model, config, *, train_loader, val_loader, table=None) -> SparsifyReport``
(``edgetrim.compress.sparse.methods``). Masks are ``edgetrim.compress.weight_masks.WeightMasks``.
"""
