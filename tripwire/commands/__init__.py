"""Command modules: each defines click commands and a ``register(cli)`` that adds them."""
