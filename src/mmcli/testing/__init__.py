"""Tiny-checkpoint builders and the synthetic "shapes" world, for tests, benches and train/.

Nothing at run time imports this package (tests/test_architecture.py checks it)."""
