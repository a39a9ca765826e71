"""The REST search endpoints (history and latest) over the simulator's history."""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from connector.simulator.faults import FaultState
from connector.simulator.filters import CompiledQuery, parse_ns, validate_query
from connector.simulator.history import DEFAULT_WINDOW_NS, MAX_PAGE_SIZE, History, PageStore


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_response(
    status: int, code: str, name: str, parameters: dict[str, Any] | None = None
) -> web.Response:
    body = {
        "errorCode": code,
        "errorName": name,
        "errorInstanceId": str(uuid.uuid4()),
        "parameters": parameters or {},
    }
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


_INJECTED = {
    401: ("UNAUTHORIZED", "Default:Unauthorized"),
    429: ("TOO_MANY_REQUESTS", "Default:TooManyRequests"),
    503: ("SERVICE_UNAVAILABLE", "Default:ServiceUnavailable"),
}


def _invalid(name: str, parameters: dict[str, Any]) -> web.Response:
    return error_response(400, "INVALID_ARGUMENT", name, parameters)


def _track_rid(track_key: str) -> str:
    # Track keys are spec/source/collection/trackId; RIDs are dotted.
    return "ri.gotham.main.track." + track_key.replace("/", ".")


@dataclass
class RestApi:
    token: str
    specs: tuple[str, ...]
    history: History
    pages: PageStore
    faults: FaultState
    counted: Callable[[], None]
    # Other bearer tokens to accept (OAuth2 tokens that have not expired): the header's value.
    accepts: Callable[[str], bool] = lambda _authorization: False

    async def history_search(self, request: web.Request) -> web.Response:
        return await self._search(request, latest_only=False)

    async def latest_search(self, request: web.Request) -> web.Response:
        return await self._search(request, latest_only=True)

    def _guard(self, request: web.Request) -> web.Response | None:
        self.counted()
        injected = self.faults.take_rest_status()
        if injected is not None:
            code, name = _INJECTED[injected]
            return error_response(injected, code, name)
        given = request.headers.get("Authorization", "")
        static = hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())
        if not static and not self.accepts(given):
            return error_response(401, "UNAUTHORIZED", "MissingCredentials")
        if request.query.get("preview") != "true":
            return _invalid("ApiFeaturePreviewUsageOnly", {"preview": "preview=true is required"})
        spec = request.match_info["spec"]
        if spec not in self.specs:
            return error_response(404, "NOT_FOUND", "ObservationSpecNotFound", {"spec": spec})
        return None

    async def _search(self, request: web.Request, latest_only: bool) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _invalid("InvalidRequestBody", {"body": "not JSON"})
        if not isinstance(body, dict):
            return _invalid("InvalidRequestBody", {"body": "must be a JSON object"})
        page_size = body.get("pageSize", MAX_PAGE_SIZE)
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            return _invalid("InvalidPageSize", {"pageSize": str(page_size)})
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            return _invalid("InvalidPageSize", {"pageSize": str(page_size)})
        token = body.get("pageToken")
        if token is not None:
            if not isinstance(token, str):
                return _invalid("InvalidPageToken", {"pageToken": str(token)})
            page = self.pages.next_page(token, page_size)
            if page is None:
                return _invalid("InvalidPageToken", {"pageToken": token})
            return self._respond(*page)
        query = body.get("query")
        errors = validate_query(query) if "query" in body else ["missing"]
        if errors:
            return _invalid("InvalidQuery", {"query": dumps(query), "errors": errors})
        assert isinstance(query, dict)
        compiled = CompiledQuery.of(query)
        spec = request.match_info["spec"]
        if latest_only:
            items: list[Any] = [g.obs for g in self.history.latest(spec, compiled)]
        else:
            window = _window(body.get("historyWindow"))
            if window is None:
                return _invalid(
                    "InvalidHistoryWindow", {"historyWindow": dumps(body.get("historyWindow"))}
                )
            tracks = self.history.track_history(spec, compiled, *window)
            # Tracks with nothing inside the window are left out rather than sent empty.
            items = [
                {"trackRid": _track_rid(key), "observations": obs} for key, obs in tracks if obs
            ]
        return self._respond(*self.pages.first_page(items, page_size))

    def _respond(self, data: list[Any], next_token: str | None) -> web.Response:
        body: dict[str, Any] = {"data": data}
        if next_token is not None:
            body["nextPageToken"] = next_token
        return web.json_response(body, dumps=dumps)


def _window(value: object) -> tuple[int, int | None] | None:
    """(start, end) in ns for a historyWindow; None when it is malformed."""
    now = time.time_ns()
    if value is None:
        return now - DEFAULT_WINDOW_NS, None
    if not isinstance(value, dict) or any(k not in ("start", "end") for k in value):
        return None
    bounds: list[int | None] = []
    for key in ("start", "end"):
        raw = value.get(key)
        parsed = parse_ns(raw) if isinstance(raw, str) else None
        if raw is not None and parsed is None:
            return None
        bounds.append(parsed)
    start = bounds[0] if bounds[0] is not None else now - DEFAULT_WINDOW_NS
    end = bounds[1]
    if end is not None and start > end:
        return None
    return start, end
