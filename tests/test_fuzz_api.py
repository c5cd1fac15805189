"""schemathesis against /openapi.json (tests/fuzz_api.py): a short run here; ``make fuzz``
runs 1,000 cases and docs/benchmarks.md gives its figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.avatar import Avatar
from streamer.engine.base import Backend
from tests.fuzz_api import fuzz

CASES = int(os.environ.get("AVATARCAST_FUZZ_CASES", "20"))


def test_schemathesis_finds_no_5xx_and_no_crash(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    figures = fuzz(standin, tmp_path, CASES)
    assert figures["clean"], json.dumps(figures, indent=2)
    assert figures["cases"] >= CASES and figures["responses_5xx"] == 0
    assert figures["operations"] >= 25  # WHEP, the microphone and the WebSocket included
    # Past the access check too: some cases were answered 2xx, some refused for their key.
    statuses = {int(s) for s in figures["statuses"]}
    assert {200, 201, 202} & statuses and {401, 403} <= statuses
