"""The operator's API client (kube.Api) against a small aiohttp server on loopback: what it
sends (token, content type, user agent) and how it reads answers and failures."""

from __future__ import annotations

import asyncio
import pathlib
import socket
from typing import Any

import aiohttp.web
import pytest

from mailwarden.operator import credentials, kube


async def _serve(seen: list[dict[str, Any]]) -> tuple[aiohttp.web.AppRunner, str]:
    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
            }
        )
        name = request.path.rsplit("/", 1)[-1]
        if name == "missing":
            return aiohttp.web.json_response({"reason": "NotFound", "message": "no"}, status=404)
        if name == "refused":
            answer = {"reason": "Invalid", "message": 'spec.ipFamilies: "IPv6" is not configured'}
            return aiohttp.web.json_response(answer, status=422)
        if name == "broken":
            return aiohttp.web.Response(text="<html>bad gateway</html>", status=502)
        if request.method == "GET" and name == "things":
            return aiohttp.web.json_response({"items": [{"n": 1}, {"n": 2}]})
        return aiohttp.web.json_response({"echo": (await request.json()) if body else None})

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_requests_carry_the_token_and_answers_and_errors_are_read() -> None:
    seen: list[dict[str, Any]] = []

    async def scenario() -> None:
        runner, url = await _serve(seen)
        api = kube.Api(credentials.Credentials(server=url, token="s3cret"))
        try:
            assert await api.list("/api/v1/things", "a=b") == [{"n": 1}, {"n": 2}]
            created = await api.create("/api/v1/namespaces/x/configmaps", {"data": {"k": "v"}})
            assert created == {"echo": {"data": {"k": "v"}}}
            await api.patch("/api/v1/namespaces/x/configmaps/c", {"data": None})
            assert await api.get("/api/v1/namespaces/x/configmaps/missing") is None
            assert await api.delete("/api/v1/namespaces/x/configmaps/missing") is False
            with pytest.raises(kube.ApiError) as refused:
                await api.create("/api/v1/namespaces/x/services/refused", {})
            assert refused.value.status == 422 and not refused.value.retriable
            assert "IPv6" in refused.value.message and refused.value.reason == "Invalid"
            with pytest.raises(kube.ApiError) as broken:
                await api.get("/api/v1/namespaces/x/services/broken")
            assert broken.value.status == 502 and broken.value.retriable
            assert "bad gateway" in broken.value.message
        finally:
            await api.aclose()
            await runner.cleanup()

    asyncio.run(scenario())
    first = seen[0]
    assert first["headers"]["Authorization"] == "Bearer s3cret"
    assert first["headers"]["User-Agent"] == kube.USER_AGENT
    assert first["query"] == {"labelSelector": "a=b"}
    patch = seen[2]
    assert patch["method"] == "PATCH"
    assert patch["headers"]["Content-Type"] == kube.MERGE_PATCH
    assert patch["body"] == b'{"data":null}'


def test_no_answer_is_a_retriable_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> kube.ApiError:
        api = kube.Api.for_url(f"http://127.0.0.1:{port}")
        try:
            await api.get("/api/v1/namespaces")
        except kube.ApiError as exc:
            return exc
        finally:
            await api.aclose()
        raise AssertionError("no error")

    error = asyncio.run(scenario())
    assert error.status == 0 and error.retriable


def test_a_rotated_token_file_is_read_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod the kubelet rewrites the projected token before it expires."""
    token = tmp_path / "token"
    token.write_text("first\n")
    monkeypatch.setattr(kube, "TOKEN_SECONDS", 0.0)
    seen: list[dict[str, Any]] = []

    async def scenario() -> None:
        runner, url = await _serve(seen)
        api = kube.Api(credentials.Credentials(server=url, token_file=str(token)))
        try:
            await api.list("/api/v1/things")
            token.write_text("second\n")
            await asyncio.sleep(0.01)
            await api.list("/api/v1/things")
            token.unlink()  # mid-rotation: the last token is kept
            await api.list("/api/v1/things")
        finally:
            await api.aclose()
            await runner.cleanup()

    asyncio.run(scenario())
    assert [r["headers"]["Authorization"] for r in seen] == [
        "Bearer first",
        "Bearer second",
        "Bearer second",
    ]
