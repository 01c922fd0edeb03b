"""Request guards and response headers: API keys, a concurrency cap, JSON depth, CORS, CSP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_cors import CORS
from webargs.flaskparser import abort

from inference_app.config import ConfigError

EXTENSION = "inference_app.security"
#: Routes that never ask for a key nor count against the concurrency cap.
OPEN_PREFIXES = ("/health/", "/v2/health/", "/ping", "/metrics")
#: Probe routes matched whole: ``/`` is KServe's liveness check.
OPEN_PATHS = frozenset({"/"})
#: Routes of the interactive docs, open unless AUTH_DOCS.
DOCS_PREFIXES = ("/docs", "/openapi.json")
API_KEY_HEADER = "X-API-Key"
REALM = 'Bearer realm="inference-app"'
#: The Content-Security-Policy of every answer but the docs page.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
#: Headers of every answer, unless a view set its own.
SAFE_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
#: Headers of a JSON answer to a POST, as the after-request hook sets them.
JSON_POST_HEADERS = (
    *SAFE_HEADERS,
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", API_POLICY),
)
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
}


class Guard:
    """One app's key digests and concurrency semaphore.

    :param digests: SHA-256 hex digests of the accepted API keys; none: no key asked.
    :param max_concurrent: the most requests one worker answers at once (0: no cap).
    """

    def __init__(self, digests: frozenset[str], max_concurrent: int) -> None:
        self.digests = digests
        self.semaphore = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None

    def accepts(self, key: str) -> bool:
        """Return whether ``key`` is one of the API keys, comparing digests in constant time."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        matched = False
        for known in self.digests:  # every digest is compared, whichever matches
            matched |= hmac.compare_digest(digest, known)
        return matched


def key_digests(keys: list[str], keys_file: str | None, instance_path: str) -> frozenset[str]:
    """Return the digests of the configured keys and of the keys file's lines.

    :raises ConfigError: the keys file cannot be read or holds a line that is not a digest.
    """
    digests = {hashlib.sha256(key.encode()).hexdigest() for key in keys}
    if keys_file:
        path = Path(instance_path) / keys_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ConfigError(f"setting API_KEYS_FILE: cannot read {path}: {error}") from None
        for number, line in enumerate(lines, start=1):
            digest = line.split("#", 1)[0].strip().lower()
            if not digest:
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(
                    f"setting API_KEYS_FILE: {path}:{number} is not a SHA-256 hex digest"
                )
            digests.add(digest)
    return frozenset(digests)


def presented_key(authorization: str, api_key: str | None) -> str | None:
    """Return the key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``.

    :param authorization: the ``Authorization`` header, empty if absent.
    :param api_key: the ``X-API-Key`` header, if any.
    """
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return api_key


def _guard() -> Guard:
    guard: Guard = current_app.extensions[EXTENSION]
    return guard


def is_probe(path: str) -> bool:
    """Return whether ``path`` is a probe or a scrape: never asks for a key or a slot."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _is_open(path: str) -> bool:
    if is_probe(path):
        return True
    return path.startswith(DOCS_PREFIXES) and not current_app.config["AUTH_DOCS"]


def _authenticate() -> None:
    guard = _guard()
    if not guard.digests or request.method == "OPTIONS" or _is_open(request.path):
        return
    key = presented_key(
        request.headers.get("Authorization", ""), request.headers.get(API_KEY_HEADER)
    )
    if not key or not guard.accepts(key):
        abort(
            401,
            message=(
                "Send a valid API key: the header Authorization: Bearer <key>, or X-API-Key"
                if key
                else "This API needs a key: send Authorization: Bearer <key>, or X-API-Key"
            ),
            headers={"WWW-Authenticate": REALM},
        )


def _refuse_oversized_stream() -> None:
    """Answer 413 to a body without Content-Length (chunked) that passes the size limit.

    Werkzeug stops reading such a body at ``MAX_CONTENT_LENGTH`` without an error; a body
    cut there must not be taken for the whole of it.
    """
    if request.content_length is not None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        abort(413)  # errors.py words it, as for bodies with a Content-Length


def _enter() -> None:
    semaphore = _guard().semaphore
    if semaphore is None or is_probe(request.path):
        return
    if not semaphore.acquire(blocking=False):
        abort(
            429,
            message="This worker is answering as many requests as it may: retry in a second",
            headers={"Retry-After": "1"},
        )
    g.holds_slot = True


def _leave(error: BaseException | None) -> None:
    if g.pop("holds_slot", False):
        semaphore = _guard().semaphore
        if semaphore is not None:
            semaphore.release()


def _headers(response: Response) -> Response:
    for name, value in SAFE_HEADERS:
        response.headers.setdefault(name, value)
    if request.method == "POST":
        response.headers["Cache-Control"] = "no-store"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = _page_policy(response)
    else:
        response.headers.setdefault("Content-Security-Policy", API_POLICY)
    return response


def _page_policy(response: Response) -> str:
    """Return a policy letting a page run only its own files and its own inline scripts."""
    html = response.get_data(as_text=True)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'"
    )


def init_app(app: Flask, api: Any) -> None:
    """Install authentication, the concurrency cap, security headers and CORS on ``app``.

    With keys configured, the OpenAPI document declares the bearer and ``X-API-Key``
    schemes, so Swagger UI's Authorize button sends them.

    :raises ConfigError: the keys file cannot be read.
    """
    digests = key_digests(app.config["API_KEYS"], app.config["API_KEYS_FILE"], app.instance_path)
    app.extensions[EXTENSION] = Guard(digests, app.config["MAX_CONCURRENT_REQUESTS"])
    app.before_request(_authenticate)
    app.before_request(_refuse_oversized_stream)
    app.before_request(_enter)
    app.teardown_request(_leave)
    app.after_request(_headers)
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(app, origins=origins, expose_headers=["X-Request-ID"])
    if digests:
        for name, scheme in SECURITY_SCHEMES.items():
            api.spec.components.security_scheme(name, scheme)
        api.spec.options["security"] = [{name: []} for name in SECURITY_SCHEMES]
