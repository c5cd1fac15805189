"""WHIP's HTTP side (RFC 9725): POST the offer, follow redirects, read the answer, DELETE.

Requests go through an ``httpx.AsyncClient``, so name resolution, connecting and waiting for
the endpoint never block the event loop. The client ignores the environment (``trust_env``
off): no proxy variable reroutes the token and no ``.netrc`` adds credentials of its own.

What an answer means for the output is decided here, as :class:`WhipError`'s ``retry``:
a 4xx other than 408 and 429 is the user's to fix (a wrong token, a wrong URL), so the output
fails; a 5xx, a 408, a 429, a network error or an answer that is not SDP may pass, so it
retries with backoff. The token travels only in the ``Authorization`` header and no message
here contains it, nor the URL (whose path may hold a stream key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from streamer.outputs.base import OutputRejected
from streamer.outputs.whipspec import check_whip_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
REQUEST_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 5.0
MOST_RETRY_AFTER_S = 60.0
MAX_ANSWER = 256 * 1024  # an SDP answer is a few kB
RETRY_STATUSES = frozenset({408, 429})


class WhipError(Exception):
    """A publish attempt that did not work: ``retry`` says whether trying again may help,
    ``retry_after`` how long the endpoint asked to wait (``Retry-After``), if it did."""

    def __init__(self, message: str, *, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


@dataclass(frozen=True)
class Answer:
    """The endpoint's SDP answer and the resource URL to DELETE (``None`` if it gave none)."""

    sdp: str
    resource: str | None


class WhipClient:
    """One endpoint's signalling: :meth:`publish` an offer, :meth:`delete` the resource."""

    def __init__(self, url: str, token: str | None) -> None:
        self._url = url
        self._token = token
        self._http = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S, follow_redirects=False, trust_env=False
        )

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def publish(self, offer: str) -> Answer:
        """POST ``offer`` (re-POSTed through up to three 307/308 redirects) and return the
        answer, or raise :class:`WhipError`."""
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.stream(
                    "POST", url, content=offer.encode(), headers=self._headers("application/sdp")
                ) as response:
                    if response.status_code in (307, 308):
                        url = _redirect(url, response.headers.get("location"))
                        continue
                    if response.status_code in (200, 201):
                        return _answer(response, await _body(response))
                    raise _refusal(response)
            except httpx.HTTPError as exc:
                raise WhipError(
                    f"cannot reach the WHIP endpoint: {_network(exc)}", retry=True
                ) from None
        raise WhipError(
            f"the WHIP endpoint redirected more than {MAX_REDIRECTS} times", retry=False
        )

    async def delete(self, resource: str) -> bool:
        """End the published session at its resource URL; a failure is only logged (the
        endpoint times the session out by itself when its media stops)."""
        try:
            response = await self._http.delete(
                resource, headers=self._headers(), timeout=DELETE_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            log.warning("WHIP DELETE failed: %s", _network(exc))
            return False
        if response.status_code >= 300:
            log.warning("WHIP DELETE answered %d", response.status_code)
            return False
        return True

    async def aclose(self) -> None:
        await self._http.aclose()


def _network(exc: httpx.HTTPError) -> str:
    """A network error in words, without the URL that httpx sometimes puts in them."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc) or type(exc).__name__
    return text.split(" for url ", 1)[0]


def _redirect(current: str, location: str | None) -> str:
    """Where a 307/308 sends the offer: resolved against the request URL and held to the
    same rules as the URL the user gave, and never from https down to http."""
    if not location:
        raise WhipError("the WHIP endpoint redirected without a Location", retry=False)
    target = urljoin(current, location)
    try:
        check_whip_url(target)
    except OutputRejected as exc:
        raise WhipError(
            f"the WHIP endpoint redirected to a refused URL: {exc.message}", retry=False
        ) from None
    if urlsplit(current).scheme == "https" and urlsplit(target).scheme != "https":
        raise WhipError("the WHIP endpoint redirected from https to http", retry=False)
    return target


async def _body(response: httpx.Response) -> str:
    """The answer's text, read no further than :data:`MAX_ANSWER` (an endpoint that sends
    more is not answering with SDP, and must not fill the server's memory)."""
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER:
            raise WhipError(
                f"the WHIP endpoint's answer is over {MAX_ANSWER // 1024} kB: not SDP", retry=True
            )
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _answer(response: httpx.Response, text: str) -> Answer:
    kind = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/sdp" or not text.lstrip().startswith("v=0"):
        raise WhipError(
            f"the WHIP endpoint's answer is not SDP (Content-Type {kind or 'none'!r})",
            retry=True,
        )
    location = response.headers.get("location")
    resource = None
    if location:
        resource = urljoin(str(response.url), location)
        try:
            check_whip_url(resource)
        except OutputRejected:
            raise WhipError(
                "the WHIP endpoint's resource URL (Location) is not one this server may call",
                retry=False,
            ) from None
    else:
        log.warning("the WHIP endpoint gave no Location: the session cannot be DELETEd")
    return Answer(text, resource)


def _refusal(response: httpx.Response) -> WhipError:
    status = response.status_code
    said = f"{status} {response.reason_phrase}".strip()
    if status in RETRY_STATUSES or status >= 500:
        return WhipError(
            f"the WHIP endpoint answered {said}",
            retry=True,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    if status in (401, 403):
        return WhipError(
            f"the WHIP endpoint refused the token ({said}): check the output's token",
            retry=False,
        )
    if status == 404:
        return WhipError(f"no WHIP endpoint at this URL ({said}): check the url", retry=False)
    if 400 <= status < 500:
        return WhipError(f"the WHIP endpoint refused the offer ({said})", retry=False)
    return WhipError(f"the WHIP endpoint answered {said}, not 201 with an SDP answer", retry=False)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is rare here and ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(MOST_RETRY_AFTER_S, float(value.strip()))
