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
