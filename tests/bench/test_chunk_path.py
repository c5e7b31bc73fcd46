"""The chunk-path microbenchmark runs as documented and relays every chunk it feeds. Never speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chunk_path_relays_every_chunk_and_prints_its_cost() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chunk_path", "--chunks", "300", "--streams", "7"]
        + ["--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The module itself fails unless every chunk fed upstream was written to a client.
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.fullmatch(r"chunks 300 streams 7 us_per_chunk (\d+\.\d{3})\n", proc.stdout)
    assert match is not None, proc.stdout
    assert float(match.group(1)) > 0
