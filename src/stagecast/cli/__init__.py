"""The ``stagecast`` command: ``serve`` the gateway, ``chat`` with it."""

from stagecast.cli.main import app, main

__all__ = ["app", "main"]
