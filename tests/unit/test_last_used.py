"""LastUsedRecorder: last-used times batched in memory and flushed to the store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from keysvc.usecases.last_used import LastUsedRecorder

from .support import async_test, within_deadline

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Sink:
    """A flush target that keeps each batch it was handed; it can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[dict[str, datetime]] = []
        self.failures_left = 0
        self.flushed = asyncio.Event()

    async def __call__(self, uses: Mapping[str, datetime]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("database away")
        self.batches.append(dict(uses))
        self.flushed.set()


class TestRecord:
    @async_test
    async def test_keeps_the_latest_time_per_key(self) -> None:
        """Several uses of one key flush as one entry holding the latest time."""
        sink = Sink()
        recorder = LastUsedRecorder(sink)
        recorder.record("key_a", T0 + timedelta(seconds=2))
        recorder.record("key_a", T0 + timedelta(seconds=5))
        recorder.record("key_a", T0 + timedelta(seconds=1))
        recorder.record("key_b", T0)
        await recorder.flush()
        assert sink.batches == [{"key_a": T0 + timedelta(seconds=5), "key_b": T0}]


class TestFlush:
    @async_test
    async def test_passes_the_batch_once(self) -> None:
        """A flush hands over what was recorded; the next flush hands over only newer uses."""
        sink = Sink()
        recorder = LastUsedRecorder(sink)
        recorder.record("key_a", T0)
        await recorder.flush()
        recorder.record("key_b", T0)
        await recorder.flush()
        assert sink.batches == [{"key_a": T0}, {"key_b": T0}]

    @async_test
    async def test_with_nothing_recorded_writes_nothing(self) -> None:
        """An idle recorder does not call the store."""
        sink = Sink()
        await LastUsedRecorder(sink).flush()
        assert sink.batches == []

    @async_test
    async def test_a_failed_flush_keeps_its_batch_for_the_next(self) -> None:
        """Uses of a failed flush are written by the next one, merged with newer uses."""
        sink = Sink()
        sink.failures_left = 1
        recorder = LastUsedRecorder(sink)
        recorder.record("key_a", T0 + timedelta(seconds=3))
        recorder.record("key_b", T0 + timedelta(seconds=3))
        with pytest.raises(ConnectionError):
            await recorder.flush()
        recorder.record("key_a", T0 + timedelta(seconds=9))
        recorder.record("key_b", T0 + timedelta(seconds=1))
        recorder.record("key_c", T0)
        await recorder.flush()
        assert sink.batches == [
            {"key_a": T0 + timedelta(seconds=9), "key_b": T0 + timedelta(seconds=3), "key_c": T0}
        ]


class TestPeriodicFlush:
    @async_test
    async def test_flushes_on_its_own_once_started(self) -> None:
        """Once started, recorded uses reach the store without anyone calling flush."""
        sink = Sink()
        recorder = LastUsedRecorder(sink, interval_seconds=0.01)
        recorder.start()
        try:
            recorder.record("key_a", T0)
            await within_deadline(sink.flushed.wait())
        finally:
            await recorder.close()
        assert sink.batches == [{"key_a": T0}]

    @async_test
    async def test_keeps_running_after_a_failed_flush(self) -> None:
        """A failing store only delays the write: the batch lands once the store is back."""
        sink = Sink()
        sink.failures_left = 2
        recorder = LastUsedRecorder(sink, interval_seconds=0.01)
        recorder.start()
        try:
            recorder.record("key_a", T0)
            await within_deadline(sink.flushed.wait())
        finally:
            await recorder.close()
        assert sink.batches == [{"key_a": T0}]


class TestClose:
    @async_test
    async def test_flushes_what_is_pending(self) -> None:
        """Closing writes the uses recorded since the last flush."""
        sink = Sink()
        recorder = LastUsedRecorder(sink, interval_seconds=3600)
        recorder.start()
        recorder.record("key_a", T0)
        await recorder.close()
        assert sink.batches == [{"key_a": T0}]

    @async_test
    async def test_without_start_still_flushes(self) -> None:
        """A recorder never started still writes its pending uses on close."""
        sink = Sink()
        recorder = LastUsedRecorder(sink)
        recorder.record("key_a", T0)
        await recorder.close()
        assert sink.batches == [{"key_a": T0}]

    @async_test
    async def test_keeps_the_batch_of_a_flush_it_interrupts(self) -> None:
        """Closing during a periodic flush still writes that flush's batch: nothing is lost."""
        delivered: list[dict[str, datetime]] = []
        writing = asyncio.Event()

        async def slow_then_fast(uses: Mapping[str, datetime]) -> None:
            if not writing.is_set():
                writing.set()
                await asyncio.Event().wait()  # the first write hangs until it is cancelled
            delivered.append(dict(uses))

        recorder = LastUsedRecorder(slow_then_fast, interval_seconds=0.01)
        recorder.start()
        recorder.record("key_a", T0)
        await within_deadline(writing.wait())
        await within_deadline(recorder.close())
        assert delivered == [{"key_a": T0}]
