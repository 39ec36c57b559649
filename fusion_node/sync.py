"""Synchronisation policies: group messages from several streams into sets by header stamp.

Two policies are provided, each a pure-Python re-implementation of the behaviour of a
``message_filters`` policy of ROS 2, so that a node built on this module produces the sets a ROS 2
node with the same settings would produce from the same arrivals:

:class:`ApproximateTimePolicy`
    ``message_filters::sync_policies::ApproximateTime``: out of the messages queued on every
    topic, pick sets (one message per topic) whose stamps span as short an interval as possible,
    and publish each set as soon as no later arrival could still produce a better one.

:class:`ApproximateEpsilonPolicy`
    ``message_filters::sync_policies::ApproximateEpsilonTime``: publish the heads of all queues
    as a set when they all lie within ``epsilon_ns`` of the oldest head; otherwise discard the
    oldest head together with every other head close to it.

Both are driven the same way: call ``add(topic_index, stamp_ns, item)`` for each arriving
message; it returns the sets completed by that arrival (a list, usually empty or of one set),
each set a tuple of the items in topic order. Nothing here reads a clock, sleeps, or touches the
network: output depends only on the order of calls and the stamps given. ``add`` takes an
internal lock, mirroring the mutex of the C++ policies, so one policy may be fed from several
threads.

Arithmetic follows the C++ closely. Stamps and durations are integer nanoseconds, as in
``rclcpp::Time`` / ``rclcpp::Duration``. The one non-integer step is the age penalty: upstream
compares ``(a duration) * (1 + age_penalty)`` with another duration, where the product is taken
in ``long double`` and truncated toward zero to whole nanoseconds. :func:`_make_duration_scaler`
reproduces that product bit for bit for the x86-64 80-bit ``long double`` (64-bit significand,
round-half-even), so ties and near-ties resolve the way they do on a ROS 2 x86-64 build.
Upstream's overflow exceptions (stamps or durations near the int64 limits) are not reproduced.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
from collections import deque
from typing import Any, Callable

__all__ = [
    "ApproximateTimePolicy",
    "ApproximateEpsilonPolicy",
    "MIN_TOPICS",
    "MAX_TOPICS",
    "DEFAULT_AGE_PENALTY",
    "DEFAULT_MAX_INTERVAL_NS",
]

_log = logging.getLogger(__name__)

MIN_TOPICS = 2
"""Fewest topics a policy accepts."""

MAX_TOPICS = 9
"""Most topics a policy accepts (message_filters supports up to nine inputs)."""

DEFAULT_AGE_PENALTY = 0.1
"""Age penalty used by message_filters when none is set."""

DEFAULT_MAX_INTERVAL_NS = 2_147_483_647 * 1_000_000_000 + 999_999_999
"""The "no limit" max interval of message_filters: ``rclcpp::Duration(INT32_MAX, 999999999)``."""

# Significand width of the C++ ``long double`` used by rclcpp::Duration::operator*(double).
# 64 is the x86-64 (x87 extended precision) value.
_LONG_DOUBLE_SIGNIFICAND_BITS = 64

_NO_PIVOT = -1


# --------------------------------------------------------------------------- argument checking


def _as_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python int (bool excluded); TypeError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        kind = type(value).__name__
        raise TypeError(f"{name} must be an integer, got {kind} {value!r}") from None


def _check_num_topics(num_topics: Any) -> int:
    n = _as_int(num_topics, "num_topics")
    if not MIN_TOPICS <= n <= MAX_TOPICS:
        raise ValueError(f"num_topics must be between {MIN_TOPICS} and {MAX_TOPICS}, got {n}")
    return n


def _check_queue_size(queue_size: Any) -> int:
    q = _as_int(queue_size, "queue_size")
    if q < 1:
        raise ValueError(f"queue_size must be at least 1, got {q}")
    return q


def _topic_index_checker(n: int) -> Callable[[Any], int]:
    def check(topic_index: Any) -> int:
        # Fast path: a plain in-range int.
        if type(topic_index) is int and 0 <= topic_index < n:
            return topic_index
        i = _as_int(topic_index, "topic_index")
        if not 0 <= i < n:
            raise IndexError(f"topic_index must be in [0, {n - 1}], got {i}")
        return i

    return check


def _as_stamp(stamp_ns: Any) -> int:
    if type(stamp_ns) is int:
        return stamp_ns
    return _as_int(stamp_ns, "stamp_ns")


# --------------------------------------------------------------------------- duration scaling


def _make_duration_scaler(factor: float) -> Callable[[int], int]:
    """Return ``f(d)`` equal to C++ ``static_cast<int64_t>((long double)d * (long double)factor)``.

    ``factor`` is a double; ``d`` an int64 count of nanoseconds. Both convert to ``long double``
    exactly; their product is rounded once to the significand width (round-half-even) and then
    truncated toward zero. The exact product is ``d * num / 2**shift`` with ``num / 2**shift`` the
    exact value of ``factor``, so the rounding can be redone with integers.
    """
    num, den = float(factor).as_integer_ratio()
    shift = den.bit_length() - 1  # den is a power of two
    bits = _LONG_DOUBLE_SIGNIFICAND_BITS

    if num == 1 and shift == 0:  # factor == 1.0, i.e. no age penalty
        return lambda d: d

    def scale(d: int) -> int:
        if d == 0:
            return 0
        mag = -d if d < 0 else d
        prod = mag * num
        excess = prod.bit_length() - bits
        if excess > 0:
            kept = prod >> excess
            rest = prod - (kept << excess)
            half = 1 << (excess - 1)
            if rest > half or (rest == half and kept & 1):
                kept += 1
            prod = kept << excess
        whole = prod >> shift
        return -whole if d < 0 else whole

    return scale


# --------------------------------------------------------------------------- approximate time


class ApproximateTimePolicy:
    """Approximate-time synchronisation, set for set the same as ROS 2 message_filters.

    **What it computes.** Each topic has a queue of messages in arrival order. A *set* takes one
    message per topic; its *interval* runs from its earliest to its latest stamp. The policy
    emits sets with short intervals, never uses a message twice, and never emits a set that uses
    a message older than one already used on the same topic.

    **How.** Whenever every topic has at least one queued message, look at the queue heads. The
    latest head is the *end*, the earliest the *start* (ties: the end is the highest topic index
    among equal stamps, the start the lowest). With no candidate yet, the heads form the first
    candidate set and the end's topic becomes the *pivot*: every set that could still beat this
    candidate must contain the pivot message or a later one of that topic, so the pivot's stamp
    bounds what can be gained. The start head is then set aside into that topic's *past* list
    (kept, not dropped, because the search may have to be undone) and the next heads are compared
    with the candidate. A new head set replaces the candidate when its start has advanced by more
    than its end has advanced times ``1 + age_penalty``; the age penalty therefore makes the
    policy prefer older sets that are slightly worse. Replacing the candidate discards the past
    lists: each of those messages is older than the new candidate's message on its topic and
    can never be used.

    The candidate is published, and the search ends, when

    * the start head set aside was the pivot itself (every set containing the pivot has been
      tried), or
    * the end's advance times ``1 + age_penalty`` already reaches the gap between the candidate's
      start and the pivot: any later set contains the interval from the pivot to that end and
      cannot win, or
    * some queue ran dry and the same proof succeeds with *virtual* heads: an empty queue is
      assumed to receive, at the earliest, its last message's stamp plus that topic's
      ``inter_message_lower_bounds_ns`` entry (but not before the pivot). The search advances
      over these optimistic heads; if the candidate still wins it is published now, otherwise
      the virtual moves are undone and the policy waits for more messages.

    Publishing returns every set-aside message to the front of its queue and removes the
    candidate's messages. Note that a search only runs when an arrival fills a topic whose queue
    was empty (or after a drop, below); an arrival on a non-empty queue only queues.

    **Limits.** ``max_interval_ns`` rejects a would-be first candidate whose heads span more than
    that: its start head is dropped instead. ``queue_size`` bounds, per topic, the queued plus
    set-aside messages: when an arrival exceeds it, the search is cancelled (set-aside messages
    return to their queues), the topic's oldest message is dropped, and the topic is marked as
    having dropped messages; a topic so marked is not accepted as a pivot (the start head is
    discarded instead) until a head set forms in which it is not the latest head, since a
    dropped message might have made a better set. If a
    candidate was pending, it is discarded and the search restarts on what is queued.

    Args:
        num_topics: number of input streams, 2 to 9.
        queue_size: per-topic bound on held messages, at least 1 (2 or more recommended).
        age_penalty: non-negative weight favouring older sets; upstream default 0.1.
        max_interval_ns: largest allowed span of a set in ns; ``None`` means unlimited (upstream
            default, ``DEFAULT_MAX_INTERVAL_NS``).
        inter_message_lower_bounds_ns: per topic, the least gap between two consecutive stamps
            on that topic (0 = unknown, the default). Larger true bounds let sets out sooner.
    """

    __slots__ = (
        "_n",
        "_queue_size",
        "_age_penalty",
        "_max_interval",
        "_bounds",
        "_scale",
        "_check_topic",
        "_deques",
        "_past",
        "_non_empty",
        "_pivot",
        "_pivot_time",
        "_candidate",
        "_cand_start",
        "_cand_end",
        "_dropped",
        "_bound_warned",
        "_lock",
    )

    def __init__(
        self,
        num_topics: int,
        queue_size: int,
        *,
        age_penalty: float = DEFAULT_AGE_PENALTY,
        max_interval_ns: int | None = None,
        inter_message_lower_bounds_ns: list[int] | None = None,
    ) -> None:
        n = _check_num_topics(num_topics)
        self._n = n
        self._queue_size = _check_queue_size(queue_size)

        if isinstance(age_penalty, bool) or not isinstance(age_penalty, (int, float)):
            raise TypeError(f"age_penalty must be a number, got {type(age_penalty).__name__}")
        age_penalty = float(age_penalty)
        if not math.isfinite(age_penalty) or age_penalty < 0.0:
            raise ValueError(f"age_penalty must be finite and >= 0, got {age_penalty!r}")
        self._age_penalty = age_penalty
        # C++ evaluates `1 + age_penalty_` in double precision, then scales in long double.
        self._scale = _make_duration_scaler(1.0 + age_penalty)

        if max_interval_ns is None:
            self._max_interval = DEFAULT_MAX_INTERVAL_NS
        else:
            mi = _as_int(max_interval_ns, "max_interval_ns")
            if mi < 0:
                raise ValueError(f"max_interval_ns must be >= 0, got {mi}")
            self._max_interval = mi

        if inter_message_lower_bounds_ns is None:
            self._bounds = [0] * n
        else:
            bounds = list(inter_message_lower_bounds_ns)
            if len(bounds) != n:
                raise ValueError(
                    f"inter_message_lower_bounds_ns must have one entry per topic "
                    f"({n}), got {len(bounds)}"
                )
            checked = []
            for k, b in enumerate(bounds):
                v = _as_int(b, f"inter_message_lower_bounds_ns[{k}]")
                if v < 0:
                    raise ValueError(f"inter_message_lower_bounds_ns[{k}] must be >= 0, got {v}")
                checked.append(v)
            self._bounds = checked

        self._check_topic = _topic_index_checker(n)
        self._deques: list[deque[tuple[int, Any]]] = [deque() for _ in range(n)]
        self._past: list[list[tuple[int, Any]]] = [[] for _ in range(n)]
        self._non_empty = 0
        self._pivot = _NO_PIVOT
        self._pivot_time = 0
        self._candidate: tuple | None = None
        self._cand_start = 0
        self._cand_end = 0
        self._dropped = [False] * n
        self._bound_warned = [False] * n
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- public

    @property
    def num_topics(self) -> int:
        """Number of input streams."""
        return self._n

    @property
    def queue_size(self) -> int:
        """Per-topic bound on held (queued plus set-aside) messages."""
        return self._queue_size

    @property
    def age_penalty(self) -> float:
        return self._age_penalty

    @property
    def max_interval_ns(self) -> int:
        return self._max_interval

    @property
    def inter_message_lower_bounds_ns(self) -> tuple[int, ...]:
        return tuple(self._bounds)

    def held_counts(self) -> tuple[int, ...]:
        """Per topic, how many messages the policy holds (queued plus set aside in a search)."""
        with self._lock:
            return tuple(len(q) + len(p) for q, p in zip(self._deques, self._past))

    def add(self, topic_index: int, stamp_ns: int, item: Any) -> list[tuple]:
        """Queue ``item`` (stamped ``stamp_ns``) on ``topic_index``; return the sets it completes.

        Each returned set is a tuple of ``num_topics`` items in topic order; sets come out in the
        order they are found (increasing time). Raises IndexError for a topic index outside
        ``[0, num_topics)``.
        """
        i = self._check_topic(topic_index)
        stamp = _as_stamp(stamp_ns)
        out: list[tuple] = []
        with self._lock:
            q = self._deques[i]
            q.append((stamp, item))
            if len(q) == 1:
                self._non_empty += 1
                if self._non_empty == self._n:
                    self._process(out)
            elif not self._bound_warned[i]:
                self._check_inter_message_bound(i)
            if len(q) + len(self._past[i]) > self._queue_size:
                # Over the bound: undo any search in progress, drop this topic's oldest message.
                self._recover_all()
                q.popleft()  # cannot empty q: it held more than queue_size >= 1 messages
                self._dropped[i] = True
                if self._pivot != _NO_PIVOT:
                    self._candidate = None
                    self._pivot = _NO_PIVOT
                    self._process(out)
        return out

    # ---------------------------------------------------------------- internals

    def _check_inter_message_bound(self, i: int) -> None:
        """Diagnostics only: warn once per topic about out-of-order or too-close stamps."""
        q = self._deques[i]
        newest = q[-1][0]
        previous = q[-2][0]
        if newest < previous:
            self._bound_warned[i] = True
            _log.warning("topic %d: stamps arrived out of order (warned once per topic)", i)
        elif newest - previous < self._bounds[i]:
            self._bound_warned[i] = True
            _log.warning(
                "topic %d: two stamps %d ns apart, closer than the inter-message lower bound "
                "%d ns (warned once per topic)",
                i,
                newest - previous,
                self._bounds[i],
            )

    def _move_front_to_past(self, i: int) -> None:
        q = self._deques[i]
        self._past[i].append(q.popleft())
        if not q:
            self._non_empty -= 1

    def _delete_front(self, i: int) -> None:
        q = self._deques[i]
        q.popleft()
        if not q:
            self._non_empty -= 1

    def _make_candidate(self) -> None:
        self._candidate = tuple(q[0][1] for q in self._deques)
        for p in self._past:
            p.clear()

    def _recover_all(self) -> None:
        count = 0
        for q, p in zip(self._deques, self._past):
            if p:
                q.extendleft(reversed(p))
                p.clear()
            if q:
                count += 1
        self._non_empty = count

    def _recover_moves(self, moves: list[int]) -> None:
        count = 0
        for q, p, k in zip(self._deques, self._past, moves):
            if k:
                q.extendleft(reversed(p[-k:]))
                del p[-k:]
            if q:
                count += 1
        self._non_empty = count

    def _publish(self, out: list[tuple]) -> None:
        out.append(self._candidate)  # type: ignore[arg-type]
        self._candidate = None
        self._pivot = _NO_PIVOT
        count = 0
        for q, p in zip(self._deques, self._past):
            if p:
                q.extendleft(reversed(p))
                p.clear()
            q.popleft()  # the candidate's message of this topic
            if q:
                count += 1
        self._non_empty = count

    def _process(self, out: list[tuple]) -> None:
        n = self._n
        deques = self._deques
        dropped = self._dropped
        scale = self._scale
        while self._non_empty == n:
            start_t = end_t = deques[0][0][0]
            start_i = end_i = 0
            for k in range(1, n):
                t = deques[k][0][0]
                if t >= end_t:
                    end_t = t
                    end_i = k
                if t < start_t:
                    start_t = t
                    start_i = k
            # Only the topic holding the latest head may still owe us a dropped message.
            end_dropped = dropped[end_i]
            for k in range(n):
                dropped[k] = False
            dropped[end_i] = end_dropped

            if self._pivot == _NO_PIVOT:
                if end_t - start_t > self._max_interval or end_dropped:
                    self._delete_front(start_i)
                    continue
                self._make_candidate()
                self._cand_start = start_t
                self._cand_end = end_t
                self._pivot = end_i
                self._pivot_time = end_t
                self._move_front_to_past(start_i)
            else:
                if scale(end_t - self._cand_end) < start_t - self._cand_start:
                    self._make_candidate()
                    self._cand_start = start_t
                    self._cand_end = end_t
                self._move_front_to_past(start_i)

            if start_i == self._pivot:
                self._publish(out)
            elif scale(end_t - self._cand_end) >= self._pivot_time - self._cand_start:
                self._publish(out)
            elif self._non_empty < n:
                self._virtual_search(out)

    def _virtual_search(self, out: list[tuple]) -> None:
        """Try to prove the candidate optimal using the inter-message lower bounds."""
        n = self._n
        deques = self._deques
        past = self._past
        bounds = self._bounds
        scale = self._scale
        pivot_time = self._pivot_time
        cand_start = self._cand_start
        cand_end = self._cand_end
        moves = [0] * n
        while True:
            start_t = end_t = 0
            start_i = end_i = 0
            for k in range(n):
                q = deques[k]
                if q:
                    t = q[0][0]
                else:
                    t = past[k][-1][0] + bounds[k]
                    if t < pivot_time:
                        t = pivot_time
                if k == 0:
                    start_t = end_t = t
                    continue
                if t >= end_t:
                    end_t = t
                    end_i = k
                if t < start_t:
                    start_t = t
                    start_i = k
            grown = scale(end_t - cand_end)
            if grown >= pivot_time - cand_start:
                self._publish(out)
                return
            if grown < start_t - cand_start:
                self._recover_moves(moves)
                return
            # start_t < pivot_time here, so the start head is a real, queued message.
            self._move_front_to_past(start_i)
            moves[start_i] += 1


# --------------------------------------------------------------------------- approximate epsilon


class ApproximateEpsilonPolicy:
    """Epsilon-window synchronisation, the same as ROS 2 message_filters' ApproximateEpsilonTime.

    Each topic has a queue in arrival order. Whenever every queue is non-empty, look at the heads
    and find the oldest one (lowest topic index among equal stamps):

    * if every other head is at most ``epsilon_ns`` after it, the heads form a set: it is
      returned and all heads are removed;
    * otherwise the oldest head cannot be matched (the other topics have moved past it), so it is
      removed, and so is every other head within ``epsilon_ns`` of it. (This is upstream's rule:
      such heads are dropped even though they might have matched a later message.)

    This repeats until some queue is empty. An arrival that leaves a queue empty somewhere only
    queues; if that makes its own queue longer than ``queue_size``, the oldest message of that
    topic is dropped. Sets therefore only form when the arrival that completes them is the first
    message on a topic that was empty.

    Args:
        num_topics: number of input streams, 2 to 9.
        queue_size: per-topic bound on queued messages, at least 1.
        epsilon_ns: largest allowed distance, in ns, from a set's oldest stamp to any of its
            others; must be >= 0.
    """

    __slots__ = ("_n", "_queue_size", "_epsilon", "_check_topic", "_queues", "_non_empty", "_lock")

    def __init__(self, num_topics: int, queue_size: int, epsilon_ns: int) -> None:
        n = _check_num_topics(num_topics)
        self._n = n
        self._queue_size = _check_queue_size(queue_size)
        eps = _as_int(epsilon_ns, "epsilon_ns")
        if eps < 0:
            # Upstream would loop forever on a negative epsilon (the oldest head never qualifies
            # for removal); refuse it instead.
            raise ValueError(f"epsilon_ns must be >= 0, got {eps}")
        self._epsilon = eps
        self._check_topic = _topic_index_checker(n)
        self._queues: list[deque[tuple[int, Any]]] = [deque() for _ in range(n)]
        self._non_empty = 0
        self._lock = threading.Lock()

    @property
    def num_topics(self) -> int:
        """Number of input streams."""
        return self._n

    @property
    def queue_size(self) -> int:
        """Per-topic bound on queued messages."""
        return self._queue_size

    @property
    def epsilon_ns(self) -> int:
        return self._epsilon

    def held_counts(self) -> tuple[int, ...]:
        """Per topic, how many messages are queued."""
        with self._lock:
            return tuple(len(q) for q in self._queues)

    def add(self, topic_index: int, stamp_ns: int, item: Any) -> list[tuple]:
        """Queue ``item`` (stamped ``stamp_ns``) on ``topic_index``; return the sets it completes.

        Each returned set is a tuple of ``num_topics`` items in topic order. Raises IndexError
        for a topic index outside ``[0, num_topics)``.
        """
        i = self._check_topic(topic_index)
        stamp = _as_stamp(stamp_ns)
        out: list[tuple] = []
        with self._lock:
            q = self._queues[i]
            if not q:
                self._non_empty += 1
            q.append((stamp, item))
            if self._non_empty == self._n:
                self._process(out)
            elif len(q) > self._queue_size:
                q.popleft()
                if not q:
                    self._non_empty -= 1
        return out

    def _process(self, out: list[tuple]) -> None:
        n = self._n
        queues = self._queues
        eps = self._epsilon
        while self._non_empty == n:
            oldest_t = queues[0][0][0]
            oldest_i = 0
            for k in range(1, n):
                t = queues[k][0][0]
                if t < oldest_t:
                    oldest_t = t
                    oldest_i = k
            limit = oldest_t + eps
            matched = True
            for k in range(n):
                if k != oldest_i and queues[k][0][0] > limit:
                    matched = False
                    break
            if matched:
                out.append(tuple(q[0][1] for q in queues))
                for q in queues:
                    q.popleft()
                    if not q:
                        self._non_empty -= 1
            else:
                for q in queues:
                    if q and q[0][0] <= limit:
                        q.popleft()
                        if not q:
                            self._non_empty -= 1
