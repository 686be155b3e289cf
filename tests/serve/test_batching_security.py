"""The micro-batcher and the small security helpers, without a model."""

from __future__ import annotations

import asyncio

import pytest

from medvl.serve.batching import MicroBatcher
from medvl.serve.security import bearer_from_header, check_bind, is_loopback, sniff_format, token_matches

# No assertion below depends on how fast this machine is: batches are closed by their size (a max_wait far
# longer than any test) or, for a lone request, by the wait expiring, whenever that happens; the only
# clock is a 60 s guard that turns a hang into a failure.
GUARD_S = 60.0


def test_batcher_groups_concurrent_calls_and_keeps_order() -> None:
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        return [2 * i for i in items]

    async def run() -> list[int]:
        # max_wait of an hour: a batch is dispatched because it is full, never because time ran out
        b = MicroBatcher(double, max_batch=8, max_wait_ms=3_600_000, on_batch=sizes.append)
        try:
            return await asyncio.wait_for(asyncio.gather(*[b.submit(i) for i in range(24)]), GUARD_S)
        finally:
            await b.aclose()

    assert asyncio.run(run()) == [2 * i for i in range(24)]
    assert sizes == [8, 8, 8]  # 24 concurrent calls: three full passes, not 24


def test_batcher_dispatches_a_partial_batch_when_the_wait_expires() -> None:
    """Fewer requests than max_batch are not held until the batch fills: they go when max_wait expires."""
    sizes: list[int] = []

    async def run() -> list[str]:
        b = MicroBatcher(lambda items: [s.upper() for s in items], max_batch=1000, max_wait_ms=1,
                         on_batch=sizes.append)
        try:
            first = await asyncio.wait_for(b.submit("a"), GUARD_S)
            rest = await asyncio.wait_for(asyncio.gather(b.submit("b"), b.submit("c")), GUARD_S)
            return [first, *rest]
        finally:
            await b.aclose()

    assert asyncio.run(run()) == ["A", "B", "C"]
    assert sizes[0] == 1 and sum(sizes) == 3 and all(n <= 2 for n in sizes[1:])


def test_batcher_errors_reach_every_caller_and_the_next_batch_runs() -> None:
    calls = {"n": 0}

    def flaky(items: list[str]) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("model exploded")
        return [s.upper() for s in items]

    async def run() -> tuple[list[BaseException | str], str]:
        b = MicroBatcher(flaky, max_batch=2, max_wait_ms=3_600_000)
        try:  # two calls fill the first batch, which fails for both
            first = await asyncio.wait_for(asyncio.gather(b.submit("a"), b.submit("b"), return_exceptions=True),
                                           GUARD_S)
            second = await asyncio.wait_for(asyncio.gather(b.submit("c"), b.submit("d")), GUARD_S)
            return first, second
        finally:
            await b.aclose()

    first, second = asyncio.run(run())
    assert all(isinstance(e, ValueError) and "model exploded" in str(e) for e in first)
    assert second == ["C", "D"] and calls["n"] == 2  # the batcher survives a failed batch


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
