"""The package's public names are exactly its ``__all__``."""

from __future__ import annotations

from types import ModuleType

import stagecast
import stagecast.client
import stagecast.protocol


def test_all_lists_exactly_the_public_names() -> None:
    for module in (stagecast, stagecast.protocol, stagecast.client):
        public = {
            name
            for name in dir(module)
            if not name.startswith("_") and not isinstance(getattr(module, name), ModuleType)
        }
        assert public == set(module.__all__), module.__name__
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_the_sdk_does_not_import_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, stagecast.client; "
        "bad = [m for m in sys.modules if m.startswith(('stagecast.api', 'stagecast.backends',"
        " 'stagecast.stages', 'stagecast.hub', 'fastapi', 'uvicorn'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
