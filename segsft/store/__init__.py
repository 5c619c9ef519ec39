"""The store: the run's file names (layout), reading and writing tables (io, corpus,
attribution_tables), the settings fingerprint and the resumable-output protocol of every writer.

Imports nothing from `segsft.run` or a stage (tests/test_structure.py checks it)."""
