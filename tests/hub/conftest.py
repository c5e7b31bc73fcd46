"""The hub tests use the shared Redis fixtures of tests/conftest.py."""
