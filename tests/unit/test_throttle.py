"""The failure throttle and the expiring negative cache, alone, on a clock the tests move."""

from __future__ import annotations

import pytest

from keysvc.usecases.throttle import ExpiringSet, FailureThrottle, Throttled

from .support import FakeMonotonic

KEY_ID = "3kTq9ZcWm1Ab"
OTHER_KEY_ID = "Ytcjoqe6E9G9"
REAL = b"r" * 32
LIMIT = 3
WINDOW = 60.0


def _throttle(monotonic: FakeMonotonic, **kwargs: float) -> FailureThrottle:
    options = {"max_failures": LIMIT, "window_seconds": WINDOW, **kwargs}
    return FailureThrottle(monotonic=monotonic, **options)  # type: ignore[arg-type]


def _guess(number: int) -> bytes:
    """The digest of the number-th wrong secret."""
    return number.to_bytes(32, "big")


def _fail(throttle: FailureThrottle, key_id: str, number: int) -> Throttled | None:
    """One wrong secret verified and found wrong; the notice if the window just filled."""
    assert throttle.admit(key_id, _guess(number))
    return throttle.failed(key_id)


def _fill(throttle: FailureThrottle, key_id: str = KEY_ID, start: int = 0) -> None:
    for number in range(start, start + LIMIT):
        _fail(throttle, key_id, number)


class TestLimit:
    def test_allows_the_limit_then_refuses(self) -> None:
        """max_failures wrong secrets are verified; the next unproven one is refused unchecked."""
        throttle = _throttle(FakeMonotonic())
        for number in range(LIMIT):
            assert throttle.refuses(KEY_ID, _guess(number)) is False
            _fail(throttle, KEY_ID, number)

        assert throttle.refuses(KEY_ID, _guess(LIMIT)) is True
        assert throttle.admit(KEY_ID, _guess(LIMIT)) is False
        assert throttle.refuses(KEY_ID, _guess(0)) is True

    def test_running_verifications_count(self) -> None:
        """Concurrent guesses count when they start, so a burst cannot overshoot the limit."""
        throttle = _throttle(FakeMonotonic())
        admitted = [throttle.admit(KEY_ID, _guess(number)) for number in range(10)]

        assert admitted == [True] * LIMIT + [False] * (10 - LIMIT)

    def test_a_right_secret_is_not_counted(self) -> None:
        """A verification that succeeds gives its place back: the real key uses up nothing."""
        throttle = _throttle(FakeMonotonic())
        for _ in range(10):
            assert throttle.admit(KEY_ID, REAL)
            throttle.succeeded(KEY_ID, REAL)
        for number in range(LIMIT - 1):
            _fail(throttle, KEY_ID, number)

        assert throttle.refuses(KEY_ID, _guess(99)) is False

    def test_is_per_key_id(self) -> None:
        """Guessing one key id's secret does not throttle another key id."""
        throttle = _throttle(FakeMonotonic())
        _fill(throttle, KEY_ID)

        assert throttle.refuses(OTHER_KEY_ID, _guess(0)) is False
        assert throttle.admit(OTHER_KEY_ID, _guess(0)) is True

    @pytest.mark.parametrize(
        "options",
        [{"max_failures": 0}, {"window_seconds": 0}, {"max_key_ids": 0}],
        ids=["max-failures", "window", "max-key-ids"],
    )
    def test_refuses_nonsense_limits(self, options: dict[str, float]) -> None:
        """A limit of zero would refuse every key, or remember nothing: it is an error."""
        with pytest.raises(ValueError):
            _throttle(FakeMonotonic(), **options)


class TestWindow:
    def test_ends_window_seconds_after_the_first_guess(self) -> None:
        """The key id is throttled until the window that opened at its first guess ends."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        _fail(throttle, KEY_ID, 0)
        monotonic.advance(30)
        for number in range(1, LIMIT):
            _fail(throttle, KEY_ID, number)

        monotonic.advance(29.9)
        assert throttle.refuses(KEY_ID, _guess(99)) is True
        monotonic.advance(0.1)
        assert throttle.refuses(KEY_ID, _guess(99)) is False

    def test_the_next_window_allows_the_limit_again(self) -> None:
        """After the window, another max_failures guesses are verified, and no more."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        _fill(throttle)
        monotonic.advance(WINDOW)

        admitted = [throttle.admit(KEY_ID, _guess(100 + number)) for number in range(LIMIT + 1)]

        assert admitted == [True] * LIMIT + [False]

    def test_a_verification_that_outlives_its_window_counts_in_that_one(self) -> None:
        """A guess admitted in one window and found wrong in the next does not count twice."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        assert throttle.admit(KEY_ID, _guess(0))
        monotonic.advance(WINDOW)

        assert throttle.failed(KEY_ID) is None
        _fill(throttle, start=1)
        assert throttle.refuses(KEY_ID, _guess(99)) is True


class TestProvenSecret:
    def test_is_never_refused(self) -> None:
        """A secret that verified before is admitted even while its key id is throttled."""
        throttle = _throttle(FakeMonotonic())
        assert throttle.admit(KEY_ID, REAL)
        throttle.succeeded(KEY_ID, REAL)
        _fill(throttle)

        assert throttle.refuses(KEY_ID, REAL) is False
        assert throttle.admit(KEY_ID, REAL) is True
        assert throttle.refuses(KEY_ID, _guess(99)) is True

    def test_a_secret_proven_elsewhere_is_never_refused(self) -> None:
        """A secret known right without verifying it here (the cache's digest) is admitted."""
        throttle = _throttle(FakeMonotonic())
        throttle.prove(KEY_ID, REAL)
        _fill(throttle)

        assert throttle.refuses(KEY_ID, REAL) is False
        assert throttle.admit(KEY_ID, REAL) is True

    def test_proven_secrets_are_bounded_too(self) -> None:
        """At most max_key_ids proven secrets are kept; the least recently seen goes first."""
        throttle = _throttle(FakeMonotonic(), max_key_ids=2)
        throttle.prove("first0000000", REAL)
        throttle.prove("second000000", REAL)
        throttle.prove("first0000000", REAL)
        throttle.prove("third0000000", REAL)
        for key_id in ("first0000000", "second000000", "third0000000"):
            _fill(throttle, key_id)

        refused = [throttle.refuses(k, REAL) for k in ("first0000000", "second000000")]
        assert refused == [False, True]

    def test_does_not_give_back_a_guess(self) -> None:
        """Verifying the proven secret again frees no place for another guess."""
        throttle = _throttle(FakeMonotonic())
        throttle.succeeded(KEY_ID, REAL)
        _fill(throttle)

        assert throttle.admit(KEY_ID, REAL)
        throttle.succeeded(KEY_ID, REAL)

        assert throttle.refuses(KEY_ID, _guess(99)) is True


class TestNotice:
    def test_once_per_window_when_it_fills(self) -> None:
        """The last allowed failure returns the notice; the others, before and after, do not."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        notices = [_fail(throttle, KEY_ID, number) for number in range(LIMIT)]
        monotonic.advance(15)
        refused = [throttle.admit(KEY_ID, _guess(100 + n)) for n in range(50)]

        assert notices[:-1] == [None] * (LIMIT - 1)
        assert notices[-1] == Throttled(
            key_id=KEY_ID, failures=LIMIT, window_seconds=WINDOW, remaining_seconds=WINDOW
        )
        assert not any(refused)

    def test_says_how_long_is_left(self) -> None:
        """remaining_seconds is the time from the failure that filled the window to its end."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        _fail(throttle, KEY_ID, 0)
        monotonic.advance(20)
        _fail(throttle, KEY_ID, 1)
        monotonic.advance(5)

        notice = _fail(throttle, KEY_ID, 2)

        assert notice is not None and notice.remaining_seconds == pytest.approx(35)

    def test_comes_again_in_the_next_window(self) -> None:
        """A key id throttled in two windows gets one notice in each."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        first = [_fail(throttle, KEY_ID, number) for number in range(LIMIT)]
        monotonic.advance(WINDOW)
        second = [_fail(throttle, KEY_ID, 100 + number) for number in range(LIMIT)]

        assert sum(notice is not None for notice in first + second) == 2


class TestMemory:
    def test_holds_at_most_max_key_ids_windows(self) -> None:
        """A guess at each of many key ids keeps at most max_key_ids windows, the newest."""
        throttle = _throttle(FakeMonotonic(), max_key_ids=100)
        for number in range(1_000):
            _fail(throttle, f"{number:012d}", number)

        assert len(throttle) == 100

    def test_forgets_ended_windows(self) -> None:
        """Windows that have ended are dropped, not kept until the memory is full."""
        monotonic = FakeMonotonic()
        throttle = _throttle(monotonic)
        for number in range(50):
            _fail(throttle, f"{number:012d}", number)
        monotonic.advance(WINDOW)

        assert throttle.refuses(KEY_ID, _guess(0)) is False
        assert len(throttle) == 0

    def test_the_oldest_window_goes_first(self) -> None:
        """When memory is full, the window opened first (the nearest to ending) is dropped."""
        throttle = _throttle(FakeMonotonic(), max_key_ids=2)
        _fill(throttle, "oldest000000")
        _fill(throttle, "middle000000")
        _fill(throttle, "newest000000")

        assert throttle.refuses("oldest000000", _guess(99)) is False
        assert throttle.refuses("middle000000", _guess(99)) is True
        assert throttle.refuses("newest000000", _guess(99)) is True


class TestExpiringSet:
    def test_remembers_for_the_ttl(self) -> None:
        """An item is a member for ttl_seconds after it was added, then not."""
        monotonic = FakeMonotonic()
        remembered: ExpiringSet[str] = ExpiringSet(
            ttl_seconds=60, max_entries=10, monotonic=monotonic
        )
        remembered.add(KEY_ID)
        monotonic.advance(59.9)
        assert KEY_ID in remembered
        assert OTHER_KEY_ID not in remembered
        monotonic.advance(0.1)
        assert KEY_ID not in remembered
        assert len(remembered) == 0

    def test_adding_again_starts_the_ttl_again(self) -> None:
        """Re-adding an item remembers it for another ttl_seconds from then."""
        monotonic = FakeMonotonic()
        remembered: ExpiringSet[str] = ExpiringSet(
            ttl_seconds=60, max_entries=10, monotonic=monotonic
        )
        remembered.add(KEY_ID)
        monotonic.advance(50)
        remembered.add(KEY_ID)
        monotonic.advance(50)
        assert KEY_ID in remembered

    def test_holds_at_most_max_entries_dropping_the_oldest(self) -> None:
        """Past max_entries, the item added longest ago is forgotten first."""
        remembered: ExpiringSet[str] = ExpiringSet(
            ttl_seconds=60, max_entries=3, monotonic=FakeMonotonic()
        )
        for item in ("a", "b", "c", "a", "d"):
            remembered.add(item)

        assert len(remembered) == 3
        assert [item in remembered for item in ("a", "b", "c", "d")] == [True, False, True, True]
