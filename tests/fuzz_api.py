"""schemathesis against ``/openapi.json``: every described operation, with generated and
deliberately invalid inputs, on a served app (the stand-in avatar) that has API keys.

Each case is sent with one credential, drawn in turn: an admin key (most often, to reach the
routes' insides), a publisher key, a creator key, a revoked key, a wrong one, none, or a
session's view token. Most cases name a live session (one made by the admin key, one by the
publisher) instead of the generated id, so they get past the 404. WHEP and microphone
offers are mutations of a real aiortc offer (tests/fuzz_inputs.py), audio bodies mutations
of real files. What a case creates (sessions, viewers, outputs) is deleted after it, so the
server never fills up: any 5xx is then a bug, not a limit.

A finding is: a 5xx, a 4xx without the ``{"error": {"code", "message"}}`` shape, no answer
within 30 s, a dropped connection, a session that failed (its pipeline raised), or an
error logged by the server. Run it::

    python -m tests.fuzz_api --cases 1000 [--seed 0]    # or: make fuzz

It prints one JSON object (the figures) and exits 1 if anything was found. ``make test``
runs a smaller number of cases (tests/test_fuzz_api.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seeded
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from models.avatar import Avatar, read_avatar
from streamer.config import Limits
from streamer.engine import make_backend
from streamer.engine.base import Backend
from streamer.keys import KeyFile
from tests.conftest import make_app, make_stand_in_avatar, state_of
from tests.fuzz_inputs import (
    ServedInThread,
    audio_bodies,
    fragment_texts,
    frames_made,
    offer_template,
    sdp_bodies,
)

TIMEOUT_S = 30.0
# Drawn per case: admin most often, so that most cases get inside the routes.
CREDENTIALS = ("admin",) * 4 + ("publisher", "creator", "revoked", "wrong", "none", "view")
AVATAR_NAMES = ("default", "standin")


@dataclass
class Findings:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx and dropped connections
    bad_shapes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    failed_sessions: int = 0

    def clean(self) -> bool:
        return not (
            self.server_errors
            or self.bad_shapes
            or self.hangs
            or self.logged
            or self.failed_sessions
        )

    def report(self, seconds: float, operations: int) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "operations": operations,
            "responses_5xx": sum(n for s, n in self.statuses.items() if s >= 500),
            "server_errors": self.server_errors[:10],
            "bad_error_shape": self.bad_shapes[:10],
            "hangs": self.hangs[:10],
            "crashed_sessions": self.failed_sessions,
            "errors_logged": self.logged[:10],
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(seconds, 1),
        }


class ErrorLog(logging.Handler):
    """Errors the server logs while fuzzed (a route's traceback, a session that failed)."""

    def __init__(self, findings: Findings) -> None:
        super().__init__(logging.ERROR)
        self.findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith("streamer.session") and " failed in " in message:
            self.findings.failed_sessions += 1
        self.findings.logged.append(f"{record.name}: {message[:200]}")


def error_shape_ok(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) and set(data) == {"error"} else None
    return (
        isinstance(error, dict)
        and set(error) == {"code", "message"}
        and all(isinstance(error[k], str) and error[k] for k in ("code", "message"))
    )


class Fuzzer:
    """Sends cases, checks each answer, and tidies up what a case created."""

    def __init__(self, served: ServedInThread, keys: dict[str, str], rng: random.Random) -> None:
        self.served = served
        self.keys = keys
        self.rng = rng
        self.http = requests.Session()
        self.findings = Findings()
        self.pinned: dict[str, dict[str, Any]] = {}  # "admin"/"publisher" -> its session

    def _headers(self, who: str) -> dict[str, str]:
        if who == "view":
            token: str | None = self.session("admin")["view_token"]
        else:
            token = {"none": None, "wrong": "ack_00000000_" + "x" * 43}.get(who, self.keys.get(who))
        return {"Authorization": f"Bearer {token}"} if token else {}

    def session(self, owner: str) -> dict[str, Any]:
        """The live session ``owner`` made (made again if a case deleted it)."""
        made = self.pinned.get(owner)
        if made is None or state_of(self.served.app).registry.get(made["id"]) is None:
            answer = self.http.post(
                f"{self.served.url}/v1/sessions",
                json={"avatar": "default"},
                headers=self._headers(owner),
                timeout=TIMEOUT_S,
            )
            answer.raise_for_status()
            made = self.pinned[owner] = answer.json()
        return made

    def run(self, case: Any) -> None:
        params = case.path_parameters
        if params and "session_id" in params and self.rng.random() < 0.8:
            params["session_id"] = self.session(self.rng.choice(["admin", "publisher"]))["id"]
        if params and "name" in params and self.rng.random() < 0.5:
            params["name"] = self.rng.choice(AVATAR_NAMES)
        label = f"{case.method} {case.formatted_path}"
        self.findings.cases += 1
        try:
            response = case.call(
                base_url=self.served.url,
                session=self.http,
                headers=self._headers(self.rng.choice(CREDENTIALS)),
                timeout=TIMEOUT_S,
            )
        except requests.Timeout:
            self.findings.hangs.append(label)
            return
        except requests.ConnectionError as exc:
            self.findings.server_errors.append(f"{label}: connection dropped ({exc})")
            return
        status = response.status_code
        self.findings.statuses[status] += 1
        text = response.content[:300].decode("utf-8", "replace")
        if status >= 500:
            self.findings.server_errors.append(f"{label} -> {status}: {text}")
        elif status >= 400 and not error_shape_ok(response.content):
            self.findings.bad_shapes.append(f"{label} -> {status}: {text}")
        self._tidy(case, response)

    def _tidy(self, case: Any, response: Any) -> None:
        """Delete what the case made, so the server never fills up; empty the queues it
        filled."""
        admin = self._headers("admin")
        path = case.formatted_path
        status = response.status_code
        doomed = []
        if status == 201:
            body = json.loads(response.content) if response.content[:1] == b"{" else {}
            location = (response.headers.get("location") or [""])[0]
            if "/whep/" in location or "/mic/" in location:
                doomed.append(location)
            elif path.endswith("/outputs") and "id" in body:
                doomed.append(f"{path}/{body['id']}")
            elif path in ("/v1/sessions", "/v1/livekit/sessions") and "id" in body:
                doomed.append(f"/v1/sessions/{body['id']}")
        elif status == 202 and path.endswith("/speak"):
            doomed_queue = path[: -len("/speak")] + "/interrupt"
            self.http.post(self.served.url + doomed_queue, headers=admin, timeout=TIMEOUT_S)
        for where in doomed:
            self.http.delete(self.served.url + where, headers=admin, timeout=TIMEOUT_S)

    def explore(self, operation: Any, mode: GenerationMode, cases: int, seed: int) -> int:
        """Up to ``cases`` cases of one operation; returns how many hypothesis made (fewer
        when the operation has fewer distinct inputs)."""
        made = 0

        @seeded(seed)
        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            nonlocal made
            made += 1
            self.run(case)

        default_float_environment()
        with contextlib.suppress(Unsatisfiable):  # nothing invalid to make of some operations
            one()
        return made


def default_float_environment() -> None:
    """Undo flush-to-zero on this thread. Something in the process (native code built with
    -ffast-math, met while the server starts) leaves the FPU flushing subnormal floats,
    and hypothesis then refuses to generate floats at all. glibc's FE_DFL_ENV is (fenv_t *) -1."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libm.so.6").fesetenv(ctypes.c_void_p(-1))


def register_media_types() -> None:
    """How schemathesis makes the bodies that are not JSON: SDP, trickle ICE, audio files."""
    template = offer_template()
    schemathesis.openapi.media_type("application/sdp", sdp_bodies(template))
    fragments = fragment_texts().map(str.encode)
    schemathesis.openapi.media_type("application/trickle-ice-sdpfrag", fragments)
    audio = audio_bodies()
    for kind in ("audio/wav", "audio/mpeg", "audio/ogg", "application/octet-stream"):
        schemathesis.openapi.media_type(kind, audio)


def keyed_home(home: Path) -> dict[str, str]:
    """Keys of every kind in ``home``; the revoked one is revoked."""
    store = KeyFile(home)
    made = {
        "admin": store.create("admin"),
        "publisher": store.create("publisher", AVATAR_NAMES),
        "creator": store.create("creator"),
        "revoked": store.create("admin"),
    }
    store.revoke(made["revoked"][0].id)
    return {who: key for who, (_, key) in made.items()}


def fuzz(standin: tuple[Avatar, Backend], home: Path, cases: int, seed: int = 0) -> dict[str, Any]:
    """Run at least ``cases`` cases against a served app; the figures as a dict."""
    register_media_types()
    keys = keyed_home(home)
    # Limits high enough that no refusal is a 5xx of the server being full.
    app = make_app(standin, home=home, limits=Limits(max_viewers_per_session=1000))
    started = time.monotonic()
    with ServedInThread(app) as served:
        fuzzer = Fuzzer(served, keys, random.Random(seed))
        state_of(app).livekit_room = fake_livekit_room()
        handler = ErrorLog(fuzzer.findings)
        logging.getLogger().addHandler(handler)
        try:
            schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
            operations = [r.ok() for r in schema.get_all_operations()]
            units = [(op, mode) for op in operations for mode in GenerationMode]
            done = fuzzer.findings
            for round_ in range(100):
                if done.cases >= cases or not units:
                    break
                each = max(1, math.ceil((cases - done.cases) / len(units)))
                units = [u for u in units if fuzzer.explore(*u, each, seed + round_) >= each]
            # The live sessions still stream after everything.
            for owner in ("admin", "publisher"):
                session = state_of(app).registry.get(fuzzer.session(owner)["id"])
                if session is None or frames_made(served, session) == 0:
                    done.server_errors.append(f"the {owner}'s session stopped streaming")
        finally:
            logging.getLogger().removeHandler(handler)
    return fuzzer.findings.report(time.monotonic() - started, len(operations)) | {
        "clean": fuzzer.findings.clean()
    }


def fake_livekit_room() -> Any:
    """A LiveKit room to join without a LiveKit server (tests/livekit_fakes.py); None
    without the SDK, whose absence the route answers 501."""
    try:
        from tests.livekit_fakes import FakeRoom
    except ImportError:
        return None
    return FakeRoom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_api", description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        avatar = read_avatar(make_stand_in_avatar(root / "standin"))
        standin = (avatar, make_backend("onnx", avatar, threads=1))
        home = root / "home"
        home.mkdir()
        figures = fuzz(standin, home, args.cases, args.seed)
    print(json.dumps(figures, indent=2))
    return 0 if figures["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
