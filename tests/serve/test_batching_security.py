"""The micro-batcher and the small security helpers, without a model."""

from __future__ import annotations

import asyncio
import time

import pytest

from medvl.serve.batching import MicroBatcher
from medvl.serve.security import bearer_from_header, check_bind, is_loopback, sniff_format, token_matches


def test_batcher_groups_concurrent_calls_and_keeps_order() -> None:
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        time.sleep(0.01)
        return [2 * i for i in items]

    async def run() -> list[int]:
        b = MicroBatcher(double, max_batch=8, max_wait_ms=20, on_batch=sizes.append)
        try:
            return await asyncio.gather(*[b.submit(i) for i in range(20)])
        finally:
            await b.aclose()

    assert asyncio.run(run()) == [2 * i for i in range(20)]
    assert sum(sizes) == 20 and max(sizes) <= 8
    assert len(sizes) <= 4, sizes  # 20 concurrent calls need about 3 passes of 8, not 20


def test_batcher_single_call_is_not_delayed_much_and_errors_reach_every_caller() -> None:
    calls = {"n": 0}

    def flaky(items: list[str]) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("model exploded")
        return [s.upper() for s in items]

    async def run() -> tuple[list[BaseException | str], str, float]:
        b = MicroBatcher(flaky, max_batch=4, max_wait_ms=5)
        try:
            first = await asyncio.gather(b.submit("a"), b.submit("b"), return_exceptions=True)
            t0 = time.perf_counter()
            second = await b.submit("c")
            return first, second, time.perf_counter() - t0
        finally:
            await b.aclose()

    first, second, elapsed = asyncio.run(run())
    assert all(isinstance(e, ValueError) for e in first)
    assert second == "C" and elapsed < 0.5  # the batcher survives a failed batch


def test_batcher_rejects_wrong_result_count() -> None:
    async def run() -> None:
        b = MicroBatcher(lambda items: items[:-1], max_batch=2, max_wait_ms=1)
        try:
            await b.submit(1)
        finally:
            await b.aclose()

    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        asyncio.run(run())


def test_sniff_format_by_magic_bytes_only() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0JFIF") == "jpeg"
    assert sniff_format(b"II*\x00rest") == "tiff" and sniff_format(b"MM\x00*rest") == "tiff"
    assert sniff_format(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
    assert sniff_format(b"GIF89a") is None
    assert sniff_format(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert sniff_format(b"DICM" + b"\0" * 200) is None  # DICM must be at offset 128
    assert sniff_format(b"") is None


def test_tokens_and_bind_warnings() -> None:
    assert token_matches("abc", "abc") and not token_matches("abd", "abc") and not token_matches(None, "abc")
    assert not token_matches("ab", "abc")
    assert bearer_from_header("Bearer xyz") == "xyz" and bearer_from_header("bearer  xyz ") == "xyz"
    assert bearer_from_header("Basic xyz") is None and bearer_from_header("Bearer ") is None
    assert bearer_from_header(None) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")
    assert check_bind("127.0.0.1", None) is None
    assert check_bind("0.0.0.0", "tok") is None
    warning = check_bind("0.0.0.0", None)
    assert warning and "WITHOUT a token" in warning and "0.0.0.0" in warning


def test_cli_serve_warns_loudly_when_exposed_without_token(monkeypatch, index_dir, encoder) -> None:
    """``medvl serve --host 0.0.0.0`` without a token prints the warning before starting uvicorn."""
    import uvicorn
    from typer.testing import CliRunner

    from medvl.cli import app
    from medvl.models import encoder as encoder_mod

    monkeypatch.setattr(encoder_mod, "load_encoder", lambda spec, **kw: encoder)  # the model is tested elsewhere
    started: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: started.update(kw))
    monkeypatch.delenv("MEDVL_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["serve", "--index", str(index_dir), "--host", "0.0.0.0", "--port", "8123"])
    assert r.exit_code == 0, r.output
    assert "WITHOUT a token" in r.output
    assert started["host"] == "0.0.0.0" and started["port"] == 8123 and started["access_log"] is False
    started.clear()
    monkeypatch.setenv("MEDVL_TOKEN", "from-env")
    r = CliRunner().invoke(app, ["serve", "--index", str(index_dir)])
    assert r.exit_code == 0 and "WITHOUT a token" not in r.output and "token required" in r.output
    assert started["host"] == "127.0.0.1"
