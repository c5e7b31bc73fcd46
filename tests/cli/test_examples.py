"""``examples/cases.toml`` passes on a gateway whose roles are all the embedded model.

The tool cases reach a fake Open-Meteo server.
"""

from __future__ import annotations

import asyncio
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stagecast.config import ModelConfig
from tests.cli.helpers import BIN, cli_env
from tests.conftest import GatewayFactory
from tests.peers.open_meteo import FakeOpenMeteo

pytest.importorskip("llama_cpp", reason="needs the 'local' extra (llama-cpp-python)")

EXAMPLES = Path(__file__).parents[2] / "examples" / "cases.toml"
LOCAL_ROLES = {"traditional", "traditional_alt", "reasoning", "reasoning_alt", "local_gpu"}


@pytest.mark.llama
@pytest.mark.timeout(1200)
async def test_examples_pass_on_the_embedded_model(
    make_gateway: GatewayFactory, open_meteo: FakeOpenMeteo, tmp_path: Path
) -> None:
    cases = tomllib.loads(EXAMPLES.read_text())["cases"]
    roles = LOCAL_ROLES | {c["role"] for c in cases if "role" in c}
    # One generation at a time per role: the tiny model is CPU-bound anyway.
    embedded = ModelConfig(kind="embedded", max_concurrency=1)
    gw = make_gateway(
        models=dict.fromkeys(sorted(roles), embedded),
        tools={"open_meteo_url": open_meteo.url, "geocoding_url": open_meteo.url},
    )
    junit = tmp_path / "examples.xml"
    # Run without blocking this loop: the fake Open-Meteo server lives on it.
    proc = await asyncio.create_subprocess_exec(
        BIN, "cases", "run", str(EXAMPLES), "--server", gw.url, "--junit", str(junit),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(COLUMNS="200"),
    )  # fmt: skip
    out, err = await proc.communicate()
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stdout + stderr
    assert f"{len(cases)} passed, 0 failed" in stdout
    for case in cases:
        row = next(line for line in stdout.splitlines() if f"│ {case['name']} " in line)
        assert "PASS" in row, row
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == (str(len(cases)), "0")
    # The tool cases really reached (the fake) Open-Meteo.
    paths = {path for path, _ in open_meteo.requests}
    assert paths == {"/v1/forecast", "/v1/search"}
