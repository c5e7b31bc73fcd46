"""Stage ids are unguessable and never repeat, also in a forked child."""

from __future__ import annotations

import os
import re

from stagecast.stages.runs import _stage_ids

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [_stage_ids.new() for _ in range(10_000)]  # spans 40 draws from the OS
    assert all(HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    _stage_ids.new()  # the pool holds unused bytes that the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave without cleanup
        os.close(read)
        os.write(write, " ".join(_stage_ids.new() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {_stage_ids.new() for _ in range(5)}
    assert len(child) == 5
    assert not child & parent
