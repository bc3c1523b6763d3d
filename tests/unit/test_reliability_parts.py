"""The pure parts of the reliability layer: lifecycle phases, limits, memory levels, metrics, scrub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from metastore_core import errors
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.server.layers.limits import Limiter, MemoryLevel, MemoryMonitor, memory_level
from metastore_core.server.layers.metrics import RequestMetrics, grpc_type
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.lifecycle import PHASES, Lifecycle
from metastore_core.server.methods import Call, MethodInfo, method_info
from metastore_core.server.status import GO_NAMES, Code
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.memory import MemoryStorage
from metastore_core.storage.scrub import scrub


# ---------------------------------------------------------------------- lifecycle
async def test_phases_run_in_order_hooks_concurrent_within_a_phase() -> None:
    lc = Lifecycle(timeout_s=5)
    log: list[str] = []

    def hook(name: str, delay: float) -> Any:
        async def run() -> None:
            log.append(f"start {name}")
            await asyncio.sleep(delay)
            log.append(f"end {name}")

        return run

    for phase in reversed(PHASES):
        lc.on(phase, f"{phase}-a", hook(f"{phase}-a", 0.05))
        lc.on(phase, f"{phase}-b", hook(f"{phase}-b", 0.01))
    t0 = time.monotonic()
    report = await lc.run()
    assert time.monotonic() - t0 < 2.0
    assert [p.phase for p in report.phases] == list(PHASES)
    assert report.clean
    for i, phase in enumerate(PHASES):
        chunk = log[i * 4 : i * 4 + 4]
        assert chunk[:2] == [f"start {phase}-a", f"start {phase}-b"]  # both started before either ended
        assert set(chunk[2:]) == {f"end {phase}-a", f"end {phase}-b"}


async def test_failing_hook_is_logged_and_shutdown_continues() -> None:
    lc = Lifecycle(timeout_s=5)
    ran: list[str] = []

    async def boom() -> None:
        raise RuntimeError("hook broke")

    async def later() -> None:
        ran.append("close")

    lc.on(PHASES[1], "boom", boom)
    lc.on(PHASES[3], "close", later)
    report = await lc.run()
    assert ran == ["close"]
    assert "hook broke" in report.phases[1].error
    assert not report.clean


async def test_timeout_forces_the_remaining_phases() -> None:
    lc = Lifecycle(timeout_s=0.2)
    ran: list[str] = []

    async def stuck() -> None:
        await asyncio.sleep(30)

    async def close() -> None:
        ran.append("close")

    lc.on(PHASES[1], "stuck", stuck)
    lc.on(PHASES[3], "close", close)
    t0 = time.monotonic()
    report = await lc.run()
    assert time.monotonic() - t0 < 1.5
    assert report.timed_out and ran == ["close"]
    assert report.phases[1].error.startswith("timed out")


async def test_unknown_phase_refused() -> None:
    with pytest.raises(ValueError, match="unknown shutdown phase"):
        Lifecycle(1).on("later", "x", asyncio.sleep)  # type: ignore[arg-type]


async def test_a_second_signal_forces_the_exit_only_while_a_shutdown_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exit_code(lc: Lifecycle) -> int:
        with pytest.raises(SystemExit) as info:
            lc._second_signal(15, None)
        return int(info.value.code)  # type: ignore[arg-type]

    def fake_exit(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr("os._exit", fake_exit)
    monkeypatch.setattr("os.write", lambda fd, data: len(data))
    lc = Lifecycle(timeout_s=5)
    assert exit_code(lc) == 130  # mid-shutdown (or stuck): forced
    await lc.run()
    assert exit_code(lc) == 0  # the phases are over, cleanly: the exit code stays 0
    failing = Lifecycle(timeout_s=5)

    async def broken() -> None:
        raise OSError("disk gone")

    failing.on(PHASES[2], "persist", broken)
    await failing.run()
    assert exit_code(failing) == 1  # over, not clean: 1, as the shutdown itself returns


# ---------------------------------------------------------------------- limits
def _info(full: str = "/etcdserverpb.KV/Put", streaming: bool = False) -> MethodInfo:
    service, name = full[1:].split("/")
    return method_info(service, name, streaming, streaming, object)


async def test_concurrency_limit_refuses_at_once_naming_the_limit() -> None:
    lim = Limiter(max_requests=2, request_timeout_s=5)
    release = asyncio.Event()

    async def handler(request: Any, call: Call) -> str:
        await release.wait()
        return "ok"

    fn = lim.layer()(_info(), handler)
    first = [asyncio.ensure_future(fn(None, Call())) for _ in range(2)]
    await asyncio.sleep(0)
    t0 = time.monotonic()
    with pytest.raises(errors.TooManyRequests) as info:
        await fn(None, Call())
    assert time.monotonic() - t0 < 0.01
    assert "2 concurrent requests" in info.value.text and "--max-concurrent-requests" in info.value.text
    release.set()
    assert await asyncio.gather(*first) == ["ok", "ok"]
    assert lim.requests == 0 and lim.refused == 1 and lim.peak_requests == 2


async def test_operator_methods_are_not_counted_and_draining_refuses_the_rest() -> None:
    lim = Limiter(max_requests=1, request_timeout_s=5)

    async def handler(request: Any, call: Call) -> str:
        return "ok"

    admin = lim.layer()(_info("/metastore.admin.v1.Admin/GetStats"), handler)
    assert admin is handler  # the policy table exempts the operator's door
    put = lim.layer()(_info("/etcdserverpb.KV/Put"), handler)
    lim.draining = True
    with pytest.raises(errors.Stopping):
        await put(None, Call())


async def test_a_call_past_the_request_timeout_is_cancelled_with_deadline_exceeded() -> None:
    lim = Limiter(max_requests=10, request_timeout_s=0.05)

    async def slow(request: Any, call: Call) -> str:
        await asyncio.sleep(10)
        return "late"

    fn = lim.layer()(_info(), slow)
    task = asyncio.ensure_future(fn(None, Call()))
    await asyncio.sleep(0.06)
    assert lim.sweep(time.monotonic()) == 1
    with pytest.raises(errors.RequestTimeout):
        await task
    assert lim.requests == 0


def test_memory_levels() -> None:
    cap = 1000
    assert memory_level(500, cap) is MemoryLevel.OK
    assert memory_level(850, cap) is MemoryLevel.COLLECT
    assert memory_level(950, cap) is MemoryLevel.WARN
    assert memory_level(1000, cap) is MemoryLevel.FULL
    assert memory_level(10**12, 0) is MemoryLevel.OK  # no cap


def test_memory_monitor_tells_the_member_at_the_cap_and_when_it_falls() -> None:
    usage = [1200]
    told: list[tuple[bool, int]] = []
    mon = MemoryMonitor(1000, 0.1, on_full=lambda full, cap: told.append((full, cap)), read=lambda: usage[0])
    assert mon.check() is MemoryLevel.FULL and mon.full
    assert mon.check() is MemoryLevel.FULL and told == [(True, 1000)]  # told once, not per check
    usage[0] = 400
    assert mon.check() is MemoryLevel.OK and not mon.full
    assert told == [(True, 1000), (False, 1000)]


# ---------------------------------------------------------------------- recovery and metrics
async def test_recovery_layer_maps_panics_and_counts() -> None:
    rec = Recovery()
    metrics = RequestMetrics()
    seen: list[str] = []
    rec.handlers.append(lambda where, exc: seen.append(where))

    async def bad(request: Any, call: Call) -> None:
        raise KeyError("boom")

    async def invalid(request: Any, call: Call) -> None:
        raise errors.EmptyKey()

    fn = rec.layer(metrics)(_info("/etcdserverpb.KV/Range"), bad)
    with pytest.raises(errors.Internal) as info:
        await fn(None, Call())
    assert info.value.text == "internal server error: panic recovered"
    assert rec.panic_count == 1 and seen == ["/etcdserverpb.KV/Range"]
    m = metrics.methods[0]
    assert m.started == 1 and m.handled[Code.INTERNAL] == 1
    fn = rec.layer(metrics)(_info("/etcdserverpb.KV/Put"), invalid)
    with pytest.raises(errors.EmptyKey):
        await fn(None, Call())
    assert rec.validation_error_count == 1 and rec.panic_count == 1
    assert metrics.methods[1].handled[Code.INVALID_ARGUMENT] == 1


async def test_recovery_layer_answers_a_failed_disk_unavailable_and_corrupt_data_data_loss() -> None:
    rec = Recovery()
    reported: list[Exception] = []
    rec.on_corrupt = reported.append
    for exc, want in [
        (
            StorageError("LevelDB at /d/db is closed: reopening it failed (No space left on device)"),
            errors.Unavailable,
        ),
        (L.CorruptRecord("LevelDB: Corruption: block checksum mismatch"), errors.Corrupt),
    ]:

        async def failing(request: Any, call: Call, exc: Exception = exc) -> None:
            raise exc

        with pytest.raises(want) as info:
            await rec.layer(RequestMetrics())(_info("/etcdserverpb.KV/Range"), failing)(None, Call())
        assert want is errors.Corrupt or "storage unavailable (LevelDB at /d/db is closed" in info.value.text
    assert rec.panic_count == 0 and len(reported) == 1


async def test_safe_spawn_with_restart_gives_up_after_max() -> None:
    rec = Recovery()
    rec.restart_backoff = 0.001
    runs = []

    async def flaky() -> None:
        runs.append(1)
        raise RuntimeError("task died")

    state = rec.safe_spawn_with_restart("flaky", flaky, max_restarts=3)
    await asyncio.wait_for(state.task, 2)
    assert len(runs) == 4 and state.restarts == 3 and state.failed
    assert rec.panic_count == 4
    ok = rec.safe_spawn("once", flaky)
    await ok.task
    assert ok.failed and rec.panic_count == 5


def test_go_style_label_values() -> None:
    assert GO_NAMES[Code.FAILED_PRECONDITION] == "FailedPrecondition"
    assert GO_NAMES[Code.CANCELLED] == "Canceled"
    assert GO_NAMES[Code.UNAUTHENTICATED] == "Unauthenticated"
    assert len(GO_NAMES) == len(Code)
    assert grpc_type(_info()) == "unary"
    assert grpc_type(_info(streaming=True)) == "bidi_stream"


# ---------------------------------------------------------------------- scrub
def _store(codec: L.RecordCodec) -> MemoryStorage:
    s = MemoryStorage()
    batch: list[tuple[bytes, bytes | None]] = []
    for rev in range(2, 12):
        kv = KeyValue(key=b"k%d" % rev, value=b"v", mod_revision=rev, create_revision=rev, version=1)
        batch.append((L.rev_key(rev, 0), codec.encode(kv.SerializeToString())))
    s.write(batch)
    return s


def test_scrub_clean_store() -> None:
    codec = L.RecordCodec(True)
    report = scrub(_store(codec), codec)
    assert report.ok and report.records == 10


def test_scrub_finds_flipped_payload_and_moved_revision() -> None:
    codec = L.RecordCodec(True)
    s = _store(codec)
    key = L.rev_key(5, 0)
    record = bytearray(s.get(key) or b"")
    record[-1] ^= 0x01
    s.write([(key, bytes(record))])
    # a record whose key was changed (its payload still carries the old revision)
    moved = s.get(L.rev_key(7, 0)) or b""
    s.write([(L.rev_key(7, 0), None), (L.rev_key(70, 0), moved)])
    report = scrub(s, codec)
    assert not report.ok
    assert any("CRC mismatch" in p for p in report.problems)
    assert any("mod_revision 7" in p for p in report.problems)
