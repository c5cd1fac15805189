"""Which other origins' pages may call the API: an allowlist (``AVATARCAST_CORS_ORIGINS``).

Empty (the default), no other origin may: browsers keep the API same-origin. WHEP and the
microphone uplink are left out of the allowlist on purpose: their routes answer every origin
themselves (:mod:`streamer.api.whep`), as WHEP players embedded anywhere need, because their
credential is a Bearer token that a page must hold, never an ambient cookie.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

WEBRTC_PATH = re.compile(r"^/v1/sessions/[^/]+/(whep|mic)(/|$)")


class ApiCors:
    """Starlette's CORS middleware with the allowlist, around everything but WebRTC routes."""

    def __init__(self, app: ASGIApp, origins: Sequence[str] = ()) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and WEBRTC_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
        else:
            await self.cors(scope, receive, send)
