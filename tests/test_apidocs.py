"""/docs describes the API without loading anything from outside the server."""

import re

from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.config import Settings


def test_docs_page_is_self_contained_and_openapi_lists_the_api() -> None:
    with TestClient(create_app(Settings.from_env())) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
        paths = client.get("/openapi.json").json()["paths"]
    session = "/v1/sessions/{session_id}"
    for path in ("/v1/sessions", f"{session}/speak", f"{session}/whep"):
        assert path in paths
    # The bodies that are not JSON, and the WebSocket, are described too (schemathesis
    # fuzzes from this document: tests/fuzz_api.py).
    assert "application/sdp" in paths[f"{session}/whep"]["post"]["requestBody"]["content"]
    trickle = paths[f"{session}/whep/{{resource_id}}"]["patch"]["requestBody"]["content"]
    assert "application/trickle-ice-sdpfrag" in trickle
    assert {"application/json", "audio/wav"} <= set(
        paths[f"{session}/speak"]["post"]["requestBody"]["content"]
    )
    ws = paths[f"{session}/ws"]["get"]
    assert "101" in ws["responses"] and "sample_rate" in {p["name"] for p in ws["parameters"]}
