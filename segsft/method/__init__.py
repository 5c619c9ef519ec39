"""The method, pure and without I/O: tokenization and segmentation (text), the IG engine and its
quadrature (ig, quadrature, adaptive, batching), the metrics, the step-7 rule, grading.

Imports nothing from `segsft.store` or `segsft.run` (tests/test_structure.py checks it)."""
