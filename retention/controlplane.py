"""The control-plane client (DESIGN §6): read-only, paged, retried, rate-limited.

- GET only, to the configured origin only; a redirect elsewhere is refused.
- Explicit timeouts; retries with exponential backoff and jitter on transport errors, 408,
  429 and 5xx, honouring ``Retry-After``; other 4xx fail at once.
- A 401 re-reads the token (a rotated Kubernetes secret) and tries once more.
- Paging with ``limit`` and ``starting_after``; it ends at an empty page. A repeated cursor,
  a duplicate id or too many pages is a failure, never an endless loop.
- Every failure raises ``ControlPlaneError`` (exit 3): a half-read policy set is never used.
The token lives in a ``SecretStr`` and goes only into the Authorization header.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from .audit import AuditHeaderError, decode_resources
from .errors import ControlPlaneError, UsageError
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0
MAX_REDIRECTS = 3
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class TokenSource:
    """The service token, from ``RETENTION_SERVICE_TOKEN`` or re-read from a file."""

    def __init__(self, value: SecretStr | None = None, file: Path | None = None) -> None:
        if value is not None and file is not None:
            raise UsageError(
                "set RETENTION_SERVICE_TOKEN or RETENTION_SERVICE_TOKEN_FILE, not both"
            )
        if value is None and file is None:
            raise UsageError(
                "BRAINTRUST_API_URL is set but no token: set RETENTION_SERVICE_TOKEN_FILE "
                "(or RETENTION_SERVICE_TOKEN)"
            )
        self._value = value
        self.file = file

    def describe(self) -> str:
        """Where the token comes from; never the token."""
        if self.file is not None:
            return f"the token file {self.file} (RETENTION_SERVICE_TOKEN_FILE)"
        return "RETENTION_SERVICE_TOKEN"

    def read(self) -> SecretStr:
        if self._value is not None:
            token = self._value.get_secret_value().strip()
        else:
            assert self.file is not None
            try:
                token = self.file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(
                    f"cannot read {self.describe()}: {exc.__class__.__name__}"
                ) from None
        if not token or not all(c.isascii() and c.isprintable() and not c.isspace() for c in token):
            # a byte-order mark or any non-ASCII character cannot go into a header; the
            # message never quotes the token
            raise UsageError(f"{self.describe()} is empty or malformed")
        return SecretStr(token)


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    org_name: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    page_size: int = 1000
    max_pages: int = 1000
    audit: bool = False
    ca_bundle: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise UsageError("BRAINTRUST_API_URL must be an https:// URL")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK:
            raise UsageError("BRAINTRUST_API_URL must use https (http only on loopback)")
        if parts.username or parts.password:
            raise UsageError("BRAINTRUST_API_URL must not carry credentials")

    @property
    def origin(self) -> tuple[str, str, int | None]:
        parts = urlsplit(self.base_url)
        return parts.scheme, parts.hostname or "", parts.port

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class ControlPlaneClient:
    def __init__(
        self,
        config: ClientConfig,
        token: TokenSource,
        *,
        limiter: RateLimiter | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._token_source = token
        self._token = token.read()
        self._limiter = limiter or RateLimiter(0, 60)
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.requests = 0
        self._http = httpx.Client(
            base_url=config.base_url.rstrip("/") + "/",
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.read_timeout,
                pool=config.connect_timeout,
            ),
            verify=str(config.ca_bundle) if config.ca_bundle else True,
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": "retention-worker", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after
        # exponential backoff with up to a second of jitter, capped
        base = self.config.backoff_initial * 2.0 ** (state.attempt_number - 1)
        jitter = random.uniform(0, 1.0)  # noqa: S311 - spreading retries, not security
        return max(0.0, min(base + jitter, self.config.backoff_max))

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "control plane: %s; retry %d of %d in %.2fs",
            _describe(error),
            state.attempt_number,
            self.config.max_attempts - 1,
            wait,
        )

    def _send(self, path: str, params: dict[str, Any]) -> httpx.Response:
        url = path
        for _ in range(MAX_REDIRECTS + 1):
            self._limiter.acquire()
            self.requests += 1
            headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
            if self.config.audit:
                headers["x-bt-enable-audit"] = "true"
            response = self._http.get(url, params=params, headers=headers)
            if response.is_redirect:
                url = self._same_origin(response)
                params = _redirected_params(url, params, path)
                continue
            if response.status_code in RETRY_STATUSES:
                retry_after = _retry_after(response.headers.get("retry-after"), self._wall_clock())
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    raise ControlPlaneError(
                        f"control plane asked to wait {retry_after:.0f}s (HTTP "
                        f"{response.status_code}) on GET /{path}; giving up"
                    )
                raise _Retryable(response.status_code, retry_after)
            self._audit(response)
            return response
        raise ControlPlaneError(f"control plane: too many redirects on GET /{path}")

    def _same_origin(self, response: httpx.Response) -> str:
        location = str(response.headers.get("location", ""))
        target = urlsplit(urljoin(str(response.url), location))
        origin = (target.scheme, target.hostname or "", target.port)
        if origin != self.config.origin:
            raise ControlPlaneError(
                f"control plane redirected to another host ({target.netloc or '?'}); refused"
            )
        return target.geturl()  # absolute: httpx does not prefix it with the base URL

    def _audit(self, response: httpx.Response) -> None:
        if not self.config.audit:
            return
        headers = response.headers
        resources: object = "-"
        raw = headers.get("x-bt-audit-resources")
        if raw:
            try:
                resources = [f"{r.type}:{r.id}" for r in decode_resources(raw)]
            except AuditHeaderError as exc:
                resources = f"undecodable ({exc})"
        log.info(
            "audit: user=%s url=%s resources=%s",
            headers.get("x-bt-audit-user-id", "-"),
            headers.get("x-bt-audit-normalized-url", "-"),
            resources,
        )

    def get_json(self, path: str, params: dict[str, Any], *, allow_404: bool = False) -> Any:
        """One GET with retries; the decoded JSON body (None for an allowed 404)."""
        retried_auth = False
        while True:
            retrying = Retrying(
                stop=stop_after_attempt(self.config.max_attempts),
                wait=self._wait,
                retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
                sleep=self._sleep,
                before_sleep=self._before_sleep,
                reraise=True,
            )
            try:
                response = retrying(self._send, path, params)
            except (httpx.TransportError, _Retryable) as exc:
                raise ControlPlaneError(
                    f"control plane unavailable: GET /{path}: {_describe(exc)} "
                    f"after {self.config.max_attempts} attempts"
                ) from exc
            except httpx.HTTPError as exc:
                raise ControlPlaneError(f"control plane: GET /{path}: {_describe(exc)}") from exc
            if response.status_code == 401 and not retried_auth:
                retried_auth = True  # the token may have rotated: read it again, once
                self._token = self._token_source.read()
                continue
            break
        if response.status_code == 401:
            raise ControlPlaneError(
                f"control plane refused the token from {self._token_source.describe()} (401)"
            )
        if response.status_code == 404 and allow_404:
            return None
        if response.status_code != 200:
            raise ControlPlaneError(f"control plane answered {response.status_code} to GET /{path}")
        try:
            body: Any = json.loads(response.content, parse_constant=_reject_constant)
        except ValueError:
            raise ControlPlaneError(f"control plane sent malformed JSON for GET /{path}") from None
        return body

    # -- paging ------------------------------------------------------------------------

    def list_all(self, path: str, *, allow_404: bool = False) -> list[dict[str, Any]] | None:
        """Every object of a list endpoint, page by page, until an empty page."""
        items: list[dict[str, Any]] = []
        seen_ids: set[str] = set()
        cursors: set[str] = set()
        cursor: str | None = None
        for _ in range(self.config.max_pages):
            params: dict[str, Any] = {"limit": self.config.page_size}
            if self.config.org_name:
                params["org_name"] = self.config.org_name
            if cursor is not None:
                params["starting_after"] = cursor
            body = self.get_json(path, params, allow_404=allow_404 and cursor is None)
            if body is None:
                return None
            page = _page_objects(body, path)
            if not page:
                return items
            for item in page:
                same = _same_id(item["id"])  # ids are UUIDs: any spelling is one id
                if same in seen_ids:
                    raise ControlPlaneError(
                        f"control plane returned id {item['id']} twice in GET /{path}"
                    )
                seen_ids.add(same)
            items.extend(page)
            cursor = page[-1]["id"]
            if cursor in cursors:
                raise ControlPlaneError(f"control plane repeated the cursor in GET /{path}")
            cursors.add(cursor)
        raise ControlPlaneError(
            f"control plane: GET /{path} exceeded {self.config.max_pages} pages "
            "(RETENTION_API_MAX_PAGES)"
        )


def _page_objects(body: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
        raise ControlPlaneError(f"control plane: GET /{path}: expected {{'objects': [...]}}")
    page: list[dict[str, Any]] = body["objects"]
    for item in page:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ControlPlaneError(f"control plane: GET /{path}: an object without an id")
    return page


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "error"
    if isinstance(error, _Retryable):
        return str(error)
    if isinstance(error, httpx.TimeoutException):
        return f"timeout ({type(error).__name__})"
    return type(error).__name__


@contextmanager
def open_client(
    config: ClientConfig,
    token: TokenSource,
    *,
    limiter: RateLimiter | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ControlPlaneClient]:
    client = ControlPlaneClient(config, token, limiter=limiter, transport=transport, sleep=sleep)
    try:
        yield client
    finally:
        client.close()


def _same_id(value: Any) -> str:
    """One spelling for one UUID (hyphens or not, braces, ``urn:uuid:``, any case), so a
    duplicate is seen whatever its spelling; anything else as it came, trimmed."""
    text = str(value).strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.lower()


def _redirected_params(url: str, params: dict[str, Any], path: str) -> dict[str, Any]:
    """The query to send to a redirect's target. A Location without a query keeps ours (a
    redirect that drops ``org_name`` would read another org's projects); one with a query
    must carry ours unchanged, else the redirect is refused."""
    query = urlsplit(url).query
    if not query:
        return params
    theirs = parse_qs(query, keep_blank_values=True)
    for key, value in params.items():
        if theirs.get(key) != [str(value)]:
            raise ControlPlaneError(
                f"control plane redirected GET /{path} with a different {key!r}; refused"
            )
    return {}
