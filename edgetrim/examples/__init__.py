"""Built-in small models and data for demos, tests and benchmarks (no downloads).

* :mod:`edgetrim.examples.data`: sklearn digits as seeded, stratified train/val loaders (images
  ``(B, 1, S, S)``, flat ``(B, 64)``, or token rows ``(B, 8, 8)``) and the ``--data module:fn`` functions
  ``digits``, ``digits_flat``, ``digits_tokens``, ``digits16``.
* :mod:`edgetrim.examples.models`: ``MODEL_ZOO`` / ``build(name, **widths)``; every factory returns
  ``(module, example_inputs)`` with a batch-1 example.
* :mod:`edgetrim.examples.training`: ``train_classifier`` / ``evaluate_accuracy`` for dense baselines.

Indicative validation accuracy with ``train_classifier(..., lr=3e-3, seed=0)`` (default widths):
3 epochs: digits_cnn 0.98, resnet_small 0.98, efficientnet_b0_small 0.97, mlp_bn 0.96,
lenet_300_100 0.96, mlp 0.94, mobilenetv3_small 0.94; 10 epochs: cnn3 0.94, lenet5 0.93,
bert_encoder_small 0.93 (these three train slowly in the first epochs).
"""
