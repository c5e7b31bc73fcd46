"""The ``stagecast`` command: ``serve`` the gateway, ``chat`` with it, run ``cases`` against it."""

from stagecast.cli.main import app, main

__all__ = ["app", "main"]
