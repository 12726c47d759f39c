"""Benchmarks: each module is one command (``python -m bench.<name>``) that prints a Markdown
section and, unless ``--no-write``, replaces that section in ``docs/benchmarks.md``."""
