"""Tests of fusion_node.sync: the approximate-time and epsilon synchronisation policies.

Three kinds of test:

* Scenarios of the ROS 2 message_filters unit tests (``test/test_approximate_time_policy.cpp``
  and ``test/test_approximate_epsilon_time_policy.cpp``), restated as data: the arrivals (topic,
  stamp in seconds) and the sets upstream expects, plus the arrival at which each set comes out.
* Further scenarios, each aimed at one rule of the upstream algorithm (queue bound counting
  set-aside messages, the dropped-topic pivot rule, max interval, age penalty, 3 and 9 topics,
  ...). Their expected sets and emission points were obtained by running the same arrivals through
  the upstream C++ policy logic.
* Random streams checked against invariants: every message used at most once, sets in topic
  order and in increasing time, spans within the limit, queues within their bound.
"""

from __future__ import annotations

import random

import pytest

from fusion_node import sync

ApproximateTimePolicy = sync.ApproximateTimePolicy
ApproximateEpsilonPolicy = sync.ApproximateEpsilonPolicy

SEC = 1_000_000_000
MS = 1_000_000


def feed(policy, arrivals, unit=SEC):
    """Feed ``(topic, time)`` arrivals (time in ``unit``); items are ``(topic, time)`` labels.

    Returns ``[(arrival_index, (time_topic0, time_topic1, ...)), ...]`` for every emitted set,
    after checking that each set holds one item per topic, in topic order.
    """
    emitted = []
    for index, (topic, t) in enumerate(arrivals):
        for found in policy.add(topic, round(t * unit), (topic, t)):
            assert isinstance(found, tuple)
            assert [item[0] for item in found] == list(range(policy.num_topics))
            emitted.append((index, tuple(item[1] for item in found)))
    return emitted


def sets_only(emitted):
    return [s for _, s in emitted]


# --------------------------------------------------------------------------------------------
# Upstream approximate-time scenarios (test_approximate_time_policy.cpp), as data.
# Each: num_topics, queue_size, policy options, arrivals, expected [(arrival_index, stamps)].
# --------------------------------------------------------------------------------------------

_LONG_QUEUE_ARRIVALS = [(0, t) for t in range(9)] + [
    (1, 3),
    (0, 9),
    (0, 10),
    (0, 11),
    (0, 12),
    (1, 10),
    (0, 13),
]
_DROPPED_ARRIVALS = [
    (0, 0), (1, 1), (1, 3), (0, 4), (1, 7), (0, 8), (0, 10), (1, 11), (0, 13), (1, 14)
]
_RATE_ARRIVALS = [(0, 0), (1, 1), (0, 3), (1, 4), (0, 6), (1, 7)]

UPSTREAM_APPROXIMATE = {
    "ExactMatch": (
        2, 10, {},
        [(0, 0), (1, 0), (0, 3), (1, 3), (0, 6), (1, 6)],
        [(1, (0, 0)), (3, (3, 3)), (5, (6, 6))],
    ),
    "PerfectMatch": (
        2, 10, {},
        [(0, 0), (1, 1), (0, 3), (1, 4), (0, 6), (1, 7)],
        [(2, (0, 1)), (4, (3, 4))],
    ),
    "ImperfectMatch": (
        2, 10, {},
        [(0, 0), (1, 1), (0, 2), (0, 3), (1, 5), (0, 6), (1, 7)],
        [(2, (0, 1)), (5, (6, 5))],
    ),
    "Acceleration": (
        2, 10, {},
        [(0, 0), (1, 7), (0, 12), (1, 15), (0, 17), (1, 18)],
        [(2, (12, 7)), (5, (17, 18))],
    ),
    "DroppedMessages_queue1": (
        2, 1, {},
        _DROPPED_ARRIVALS,
        [(4, (4, 3)), (8, (10, 11))],
    ),
    "DroppedMessages_queue2": (
        2, 2, {},
        _DROPPED_ARRIVALS,
        [(3, (0, 1)), (4, (4, 3)), (7, (8, 7)), (8, (10, 11))],
    ),
    "LongQueue": (
        2, 5, {},
        _LONG_QUEUE_ARRIVALS,
        [(14, (10, 10))],
    ),
    "DoublePublish": (
        2, 10, {},
        [(0, 0), (1, 1), (1, 3), (0, 3)],
        [(3, (0, 1)), (3, (3, 3))],
    ),
    "FourTopics": (
        4, 10, {},
        [(0, 0), (1, 1), (2, 2), (3, 3), (0, 5), (3, 5), (1, 6), (2, 6), (0, 8), (1, 9),
         (2, 10), (3, 11), (0, 10), (0, 13), (1, 14)],
        [(6, (0, 1, 2, 3)), (8, (5, 6, 6, 5)), (14, (10, 9, 10, 11))],
    ),
    "EarlyPublish": (
        4, 10, {},
        [(0, 0), (1, 1), (2, 2), (3, 3), (0, 7)],
        [(4, (0, 1, 2, 3))],
    ),
    "RateBound_1.5s": (
        2, 10, {"inter_message_lower_bounds_ns": [3 * SEC // 2, 0]},
        _RATE_ARRIVALS,
        [(2, (0, 1)), (4, (3, 4))],
    ),
    "RateBound_2s": (
        2, 10, {"inter_message_lower_bounds_ns": [2 * SEC, 0]},
        _RATE_ARRIVALS,
        [(1, (0, 1)), (3, (3, 4)), (5, (6, 7))],
    ),
}


@pytest.mark.parametrize("name", list(UPSTREAM_APPROXIMATE))
def test_approximate_time_reproduces_upstream_scenario(name):
    n, queue_size, options, arrivals, expected = UPSTREAM_APPROXIMATE[name]
    policy = ApproximateTimePolicy(n, queue_size, **options)
    assert feed(policy, arrivals) == expected


def test_one_arrival_can_complete_two_sets():
    # DoublePublish: B then b arrive at 3 s; b's arrival closes both {a, A} and {b, B}.
    policy = ApproximateTimePolicy(2, 10)
    assert policy.add(0, 0, "a") == []
    assert policy.add(1, 1 * SEC, "A") == []
    assert policy.add(1, 3 * SEC, "B") == []
    assert policy.add(0, 3 * SEC, "b") == [("a", "A"), ("b", "B")]


def test_inter_message_lower_bound_lets_a_set_out_without_waiting():
    # RateBound: with topic 0 known to be >= 2 s apart, {a, A} is provably best on A's arrival;
    # with no bound it must wait for b.
    bounded = ApproximateTimePolicy(2, 10, inter_message_lower_bounds_ns=[2 * SEC, 0])
    unbounded = ApproximateTimePolicy(2, 10)
    for policy, expected_on_A in ((bounded, [("a", "A")]), (unbounded, [])):
        assert policy.add(0, 0, "a") == []
        assert policy.add(1, 1 * SEC, "A") == expected_on_A


# --------------------------------------------------------------------------------------------
# Further approximate-time scenarios, one rule each.
# --------------------------------------------------------------------------------------------


def test_three_topics_at_different_rates_pair_nearest_stamps():
    # camera (topic 0) every 100 ms, radar (1) every 77 ms, audio (2) every 50 ms; each topic
    # arrives with its own latency (30, 5, 12 ms), so arrival order differs from stamp order.
    stamps = [(0, 100 * i + 3) for i in range(6)]
    stamps += [(1, 77 * i + 10) for i in range(8)]
    stamps += [(2, 50 * i) for i in range(12)]
    latency = {0: 30, 1: 5, 2: 12}
    arrivals = sorted(stamps, key=lambda a: (a[1] + latency[a[0]], a[0]))
    policy = ApproximateTimePolicy(3, 10)
    assert feed(policy, arrivals, unit=MS) == [
        (3, (3, 10, 0)),
        (8, (103, 87, 100)),
        (11, (203, 164, 200)),
        (16, (303, 318, 300)),
        (21, (403, 395, 400)),
        (24, (503, 472, 500)),
    ]


def test_nine_topics_round_robin_group_by_round():
    # Rounds every 100 ms; topic k is stamped k ms into the round. The last round stays pending:
    # nothing yet proves it cannot be improved.
    arrivals = [(k, 100 * r + k) for r in range(4) for k in range(9)]
    policy = ApproximateTimePolicy(9, 5)
    assert feed(policy, arrivals, unit=MS) == [
        (9, tuple(range(9))),
        (18, tuple(100 + k for k in range(9))),
        (27, tuple(200 + k for k in range(9))),
    ]


def test_nine_topics_arriving_in_reverse_with_scrambled_offsets():
    arrivals = [(k, 100 * r + (k * 7) % 9) for r in range(4) for k in reversed(range(9))]
    policy = ApproximateTimePolicy(9, 5)
    offsets = tuple((k * 7) % 9 for k in range(9))
    assert offsets == (0, 7, 5, 3, 1, 8, 6, 4, 2)
    assert feed(policy, arrivals, unit=MS) == [
        (17, offsets),
        (26, tuple(100 + o for o in offsets)),
        (35, tuple(200 + o for o in offsets)),
    ]


def test_max_interval_rejects_sets_spanning_more_than_it():
    arrivals = [(0, 0), (1, 3), (0, 10), (1, 10.2), (0, 20), (1, 20.5), (0, 30)]
    limited = ApproximateTimePolicy(2, 10, max_interval_ns=SEC)
    unlimited = ApproximateTimePolicy(2, 10)
    assert feed(limited, arrivals) == [(4, (10, 10.2)), (6, (20, 20.5))]
    assert feed(unlimited, arrivals) == [(2, (0, 3)), (4, (10, 10.2)), (6, (20, 20.5))]


def test_max_interval_zero_only_emits_identical_stamps():
    arrivals = [(0, 0), (1, 0.5), (0, 1), (1, 1), (0, 2), (1, 2.5), (0, 3), (1, 3)]
    policy = ApproximateTimePolicy(2, 10, max_interval_ns=0)
    assert sets_only(feed(policy, arrivals)) == [(1, 1), (3, 3)]


@pytest.mark.parametrize(
    ("age_penalty", "expected"),
    [(0.0, (2, 3)), (0.1, (2, 3)), (0.5, (2, 3)), (1.0, (2, 0)), (2.0, (2, 0))],
)
def test_age_penalty_decides_between_older_and_tighter_set(age_penalty, expected):
    # Candidate {a=2, A=0} spans 2 s; the later {a=2, A'=3} spans 1 s but ends 1 s later.
    # It replaces the candidate only if 1 s * (1 + age_penalty) < 2 s; equality keeps the older.
    policy = ApproximateTimePolicy(2, 10, age_penalty=age_penalty)
    assert feed(policy, [(1, 0), (1, 3), (0, 2)]) == [(2, expected)]


def test_age_penalty_product_is_truncated_like_rclcpp_long_double():
    # 0.3 s * (1 + 1/3) is 399,999,999 ns in rclcpp (long double product, truncated), one short
    # of the 0.4 s the candidate spans, so the tighter set wins. A double product would give
    # exactly 400,000,000 ns and keep the older set.
    arrivals = [(1, 0), (1, 700_000_000), (0, 400_000_000)]
    policy = ApproximateTimePolicy(2, 10, age_penalty=1 / 3)
    assert feed(policy, arrivals, unit=1) == [(2, (400_000_000, 700_000_000))]


@pytest.mark.parametrize(
    ("duration_ns", "factor", "expected_ns"),
    [
        (1_000_000_000, 1.1, 1_100_000_000),
        (123_456_789, 1.1, 135_802_467),
        (300_000_000, 1.3333333333333333, 399_999_999),
        (-300_000_000, 1.3333333333333333, -399_999_999),
        (0, 1.7, 0),
        (5, 1.0, 5),
        # Values where the 80-bit long double product differs from both the exact product and
        # a double product (reference values printed by the C++ expression on x86-64).
        (634_359_960_296_101_386, 2.6385596756714826, 1_673_796_611_097_855_878),
        (707_004_003_595_665_987, 1.6593299900955247, 1_173_152_946_283_892_774),
    ],
)
def test_duration_scaling_matches_rclcpp_duration_times_double(duration_ns, factor, expected_ns):
    assert sync._make_duration_scaler(factor)(duration_ns) == expected_ns


def test_queue_bound_counts_messages_set_aside_by_the_search():
    # q=2. After a(1) is set aside in the search, topic 0 holds {1 set aside, 4, 6} = 3 > 2 when
    # a(6) arrives: the search is undone, a(1) dropped, and topic 0 may not be pivot until a set
    # forms in which it is not the latest head.
    arrivals = [(0, 1), (1, 2), (2, 3), (0, 4), (0, 6), (1, 4), (2, 5), (2, 6), (1, 6)]
    policy = ApproximateTimePolicy(3, 2)
    emitted = []
    for index, (topic, t) in enumerate(arrivals):
        emitted += [(index, tuple(i[1] for i in s)) for s in policy.add(topic, t * SEC, (topic, t))]
        assert all(held <= 2 for held in policy.held_counts())
    assert emitted == [(6, (4, 4, 3)), (8, (6, 6, 6))]


def test_topic_that_dropped_messages_is_not_accepted_as_pivot():
    # q=1: A(2) is dropped when A(3) arrives. a(3) ties with A(3); topic 1 holds the latest head
    # (ties go to the higher index) and has dropped a message, so a(3) is discarded instead of
    # forming {3, 3}. The next pair forms normally.
    policy = ApproximateTimePolicy(2, 1)
    assert feed(policy, [(1, 2), (1, 3), (0, 3)]) == []
    policy = ApproximateTimePolicy(2, 1)
    assert feed(policy, [(1, 2), (1, 3), (0, 3), (0, 4), (1, 4)]) == [(4, (4, 4))]


def test_dropped_mark_survives_until_the_topic_stops_being_the_latest_head():
    # q=1: A(3) overflows topic 1 while candidate {a=1, A=2} is pending; A(2) is dropped and the
    # re-run search discards a(1) (topic 1 holds the latest head). Topic 1 is still marked when
    # a(3) arrives and ties with A(3), so a(3) is discarded too: no set at all.
    policy = ApproximateTimePolicy(2, 1)
    assert feed(policy, [(1, 2), (0, 1), (1, 3), (0, 3)]) == []


def test_virtual_search_steps_over_heads_level_with_the_candidate_start():
    # Candidate {2, 3, 2} (pivot topic 1). Topic 0 ran dry: its next stamp is >= 2 + 0 s, so it
    # counts as 3 (the pivot). The virtual start C(2) equals the candidate start, which proves
    # nothing either way, so C(2) is stepped over; topic 2's next stamp is then >= 2 + 2 s = 4,
    # and 1 s * 1.1 >= 3 - 2 proves the candidate optimal at once.
    policy = ApproximateTimePolicy(3, 3, inter_message_lower_bounds_ns=[0, SEC, 2 * SEC])
    assert feed(policy, [(0, 2), (1, 3), (2, 2)]) == [(2, (2, 3, 2))]


def test_virtual_proof_holds_at_equality_without_age_penalty():
    # a(2), A(3): topic 0's next stamp is >= 4 s, so any later set spans at least 1 s more than
    # nothing: 1 s * (1 + 0) >= 3 - 2 publishes on A's arrival.
    policy = ApproximateTimePolicy(
        2, 3, age_penalty=0.0, inter_message_lower_bounds_ns=[2 * SEC, 0]
    )
    assert feed(policy, [(0, 2), (1, 3)]) == [(1, (2, 3))]


def test_drop_during_pending_candidate_restarts_the_search():
    # q=1: candidate {a=3, A=1} is pending when a(4) overflows topic 0. a(3) is dropped, the
    # candidate discarded, and the search re-run on what is queued (which discards A(1)).
    policy = ApproximateTimePolicy(2, 1)
    assert feed(policy, [(0, 3), (1, 1), (0, 4), (1, 4)]) == [(3, (4, 4))]


def test_drop_returns_set_aside_messages_to_their_queues():
    # The overflow on topic 0 at a(4) cancels the search; C(1), set aside by it, is back in its
    # queue and is later discarded, while a(2) survives and is matched.
    policy = ApproximateTimePolicy(3, 2)
    assert feed(policy, [(1, 3), (2, 1), (0, 1), (0, 2), (0, 4), (2, 2)]) == [(5, (2, 3, 2))]


def test_equal_earliest_stamps_set_aside_the_lowest_topic_first():
    policy = ApproximateTimePolicy(3, 10)
    arrivals = [(0, 2), (2, 1), (1, 1), (2, 4), (1, 4), (0, 4)]
    assert feed(policy, arrivals) == [(4, (2, 1, 1)), (5, (4, 4, 4))]


def test_items_are_passed_through_unchanged():
    policy = ApproximateTimePolicy(2, 10)
    a, b = object(), object()
    policy.add(0, 5, a)
    (found,) = policy.add(1, 5, b)
    assert found[0] is a and found[1] is b


# --------------------------------------------------------------------------------------------
# Epsilon policy: upstream scenarios (test_approximate_epsilon_time_policy.cpp) and more.
# --------------------------------------------------------------------------------------------

UPSTREAM_EPSILON = {
    "ExactMatch": (
        SEC // 2,
        [(0, 0), (1, 0), (0, 3), (1, 3), (0, 6), (1, 6)],
        [(1, (0, 0)), (3, (3, 3)), (5, (6, 6))],
    ),
    "PerfectMatch": (
        3 * SEC // 2,
        [(0, 0), (1, 1), (0, 3), (1, 4), (0, 6), (1, 7)],
        [(1, (0, 1)), (3, (3, 4)), (5, (6, 7))],
    ),
    "ImperfectMatch": (
        3 * SEC // 2,
        [(0, 0), (1, 1), (0, 2), (0, 3), (1, 4), (0, 6), (1, 7)],
        [(1, (0, 1)), (4, (3, 4)), (6, (6, 7))],
    ),
}


@pytest.mark.parametrize("name", list(UPSTREAM_EPSILON))
def test_epsilon_reproduces_upstream_scenario(name):
    epsilon_ns, arrivals, expected = UPSTREAM_EPSILON[name]
    policy = ApproximateEpsilonPolicy(2, 10, epsilon_ns)
    assert feed(policy, arrivals) == expected


def test_epsilon_drops_the_oldest_head_and_heads_close_to_it_when_unmatched():
    # Heads 0, 0.5, 5 with epsilon 1 s: 5 is too far, so both 0 and 0.5 are discarded.
    policy = ApproximateEpsilonPolicy(3, 10, SEC)
    arrivals = [(0, 0), (1, 0.5), (2, 5), (0, 5), (1, 5.2)]
    assert feed(policy, arrivals) == [(4, (5, 5.2, 5))]


def test_epsilon_discards_a_close_head_that_could_have_matched_later():
    # Heads 1, 2, 3 with epsilon 1 s: unmatched, so a(1) and also b(2) (within 1 s of a(1)) go.
    # b(2) would have matched a(2) and c(3); upstream discards it all the same.
    policy = ApproximateEpsilonPolicy(3, 3, SEC)
    assert feed(policy, [(0, 1), (1, 2), (2, 3), (0, 2)]) == []
    assert policy.held_counts() == (1, 0, 1)


def test_epsilon_queue_overflow_drops_the_oldest_message_of_that_topic():
    policy = ApproximateEpsilonPolicy(2, 2, SEC)
    assert feed(policy, [(0, 0), (0, 1), (0, 2), (1, 2)]) == [(3, (1, 2))]


def test_epsilon_zero_requires_identical_stamps():
    policy = ApproximateEpsilonPolicy(2, 10, 0)
    arrivals = [(0, 1), (1, 1), (0, 2), (1, 2.5), (0, 3), (1, 3)]
    assert feed(policy, arrivals) == [(1, (1, 1)), (5, (3, 3))]


def test_epsilon_window_is_inclusive():
    policy = ApproximateEpsilonPolicy(2, 10, 10)
    assert policy.add(0, 100, "a") == []
    assert policy.add(1, 110, "b") == [("a", "b")]
    assert policy.add(0, 200, "c") == []
    assert policy.add(1, 211, "d") == []


# --------------------------------------------------------------------------------------------
# Argument checking.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_topics": 1, "queue_size": 5}, "num_topics"),
        ({"num_topics": 10, "queue_size": 5}, "num_topics"),
        ({"num_topics": 2, "queue_size": 0}, "queue_size"),
        ({"num_topics": 2, "queue_size": -3}, "queue_size"),
        ({"num_topics": 2, "queue_size": 5, "age_penalty": -0.1}, "age_penalty"),
        ({"num_topics": 2, "queue_size": 5, "age_penalty": float("nan")}, "age_penalty"),
        ({"num_topics": 2, "queue_size": 5, "max_interval_ns": -1}, "max_interval_ns"),
        ({"num_topics": 3, "queue_size": 5, "inter_message_lower_bounds_ns": [0, 0]},
         "inter_message_lower_bounds_ns"),
        ({"num_topics": 2, "queue_size": 5, "inter_message_lower_bounds_ns": [0, -5]},
         "inter_message_lower_bounds_ns"),
    ],
)
def test_approximate_time_rejects_invalid_arguments_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        ApproximateTimePolicy(**kwargs)


@pytest.mark.parametrize(
    ("args", "named"),
    [((1, 5, 0), "num_topics"), ((10, 5, 0), "num_topics"), ((2, 0, 0), "queue_size"),
     ((2, 5, -1), "epsilon_ns")],
)
def test_epsilon_rejects_invalid_arguments_naming_them(args, named):
    with pytest.raises(ValueError, match=named):
        ApproximateEpsilonPolicy(*args)


@pytest.mark.parametrize(
    "make", [lambda: ApproximateTimePolicy(3, 5), lambda: ApproximateEpsilonPolicy(3, 5, 0)]
)
@pytest.mark.parametrize("bad_index", [3, -1, 99])
def test_add_rejects_out_of_range_topic_index(make, bad_index):
    policy = make()
    with pytest.raises(IndexError, match="topic_index"):
        policy.add(bad_index, 0, "x")
    assert policy.held_counts() == (0, 0, 0)


def test_add_rejects_non_integer_stamps_and_indices():
    policy = ApproximateTimePolicy(2, 5)
    with pytest.raises(TypeError, match="stamp_ns"):
        policy.add(0, 1.5, "x")
    with pytest.raises(TypeError, match="topic_index"):
        policy.add(0.0, 1, "x")


def test_all_topic_counts_from_two_to_nine_are_accepted():
    for n in range(2, 10):
        policy = ApproximateTimePolicy(n, 1, age_penalty=0, max_interval_ns=0,
                                       inter_message_lower_bounds_ns=[0] * n)
        assert policy.num_topics == n
        assert ApproximateEpsilonPolicy(n, 1, 0).num_topics == n


# --------------------------------------------------------------------------------------------
# Random streams against invariants.
# --------------------------------------------------------------------------------------------


def random_arrivals(rng, n, count, in_order=True):
    """Per topic a period and jitter; messages arrive after a random latency, in FIFO order per
    topic. With ``in_order`` false, stamps are also scrambled within a topic."""
    arrivals = []
    base = rng.randrange(10, 50) * MS
    for topic in range(n):
        period = int(base * rng.uniform(0.8, 1.25))
        start = rng.randrange(0, period)
        arrived = 0
        for k in range(count // n + 1):
            stamp = start + k * period + rng.randrange(0, period // 4 + 1)
            arrived = max(arrived, stamp + rng.randrange(0, 80 * MS))
            if not in_order:
                stamp = max(0, stamp + rng.randrange(-period, period))
            arrivals.append((arrived, topic, k, stamp))
    arrivals.sort()
    return [(topic, stamp) for _, topic, _, stamp in arrivals[:count]]


def run_checked(policy, arrivals, queue_size):
    """Feed arrivals with item = arrival index; check the queue bound after every add."""
    sets = []
    for index, (topic, stamp) in enumerate(arrivals):
        for found in policy.add(topic, stamp, index):
            sets.append(found)
        assert all(held <= queue_size for held in policy.held_counts())
    return sets


def check_common_invariants(sets, arrivals, n):
    used = [i for s in sets for i in s]
    assert len(used) == len(set(used)), "a message was used twice"
    for s in sets:
        assert len(s) == n
        assert [arrivals[i][0] for i in s] == list(range(n)), "set not in topic order"
    for earlier, later in zip(sets, sets[1:]):
        # On every topic a later set uses a later message.
        assert all(a < b for a, b in zip(earlier, later))


@pytest.mark.parametrize("seed", range(12))
def test_random_streams_respect_approximate_time_invariants(seed):
    rng = random.Random(seed)
    n = rng.randrange(2, 10)
    queue_size = rng.choice([1, 2, 5, 20, 100])
    max_interval = rng.choice([None, 2 * MS, 5 * MS, 30 * MS])
    bounds = [rng.choice([0, 3 * MS]) for _ in range(n)]
    age_penalty = rng.choice([0.0, 0.1, 1.0])
    arrivals = random_arrivals(rng, n, 150 * n)
    policy = ApproximateTimePolicy(n, queue_size, age_penalty=age_penalty,
                                   max_interval_ns=max_interval,
                                   inter_message_lower_bounds_ns=bounds)
    sets = run_checked(policy, arrivals, queue_size)
    if max_interval is None:
        assert len(sets) > 20  # streams of similar rates do get matched
    check_common_invariants(sets, arrivals, n)
    limit = sync.DEFAULT_MAX_INTERVAL_NS if max_interval is None else max_interval
    previous = None
    for s in sets:
        stamps = [arrivals[i][1] for i in s]
        assert max(stamps) - min(stamps) <= limit
        if previous is not None:  # stamps rise per topic, so sets come out in time order
            assert min(stamps) > previous[0] and max(stamps) > previous[1]
        previous = (min(stamps), max(stamps))


@pytest.mark.parametrize("seed", range(6))
def test_random_out_of_order_streams_still_use_each_message_once(seed):
    rng = random.Random(1000 + seed)
    n = rng.randrange(2, 10)
    queue_size = rng.choice([1, 3, 10])
    arrivals = random_arrivals(rng, n, 150 * n, in_order=False)
    policy = ApproximateTimePolicy(n, queue_size, max_interval_ns=20 * MS)
    sets = run_checked(policy, arrivals, queue_size)
    check_common_invariants(sets, arrivals, n)
    for s in sets:
        stamps = [arrivals[i][1] for i in s]
        assert max(stamps) - min(stamps) <= 20 * MS


@pytest.mark.parametrize("seed", range(12))
def test_random_streams_respect_epsilon_invariants(seed):
    rng = random.Random(2000 + seed)
    n = rng.randrange(2, 10)
    queue_size = rng.choice([1, 2, 5, 20, 100])
    epsilon = rng.choice([2 * MS, 10 * MS, 40 * MS])
    arrivals = random_arrivals(rng, n, 150 * n, in_order=seed % 3 != 0)
    policy = ApproximateEpsilonPolicy(n, queue_size, epsilon)
    sets = run_checked(policy, arrivals, queue_size)
    check_common_invariants(sets, arrivals, n)
    for s in sets:
        stamps = [arrivals[i][1] for i in s]
        assert max(stamps) - min(stamps) <= epsilon


@pytest.mark.parametrize("n", [2, 3, 9])
def test_identically_stamped_streams_are_all_matched(n):
    # Every topic stamps each round identically; every round but the last is emitted, each as
    # soon as the next round starts arriving, and each set holds exactly one round.
    rounds = 50
    arrivals = [(k, r * 33 * MS) for r in range(rounds) for k in range(n)]
    for policy in (ApproximateTimePolicy(n, 3), ApproximateEpsilonPolicy(n, 3, 0)):
        sets = run_checked(policy, arrivals, 3)
        stamps = [{arrivals[i][1] for i in s} for s in sets]
        expected_rounds = rounds if isinstance(policy, ApproximateEpsilonPolicy) else rounds - 1
        assert stamps[:expected_rounds] == [{r * 33 * MS} for r in range(expected_rounds)]
        assert len(sets) in (rounds - 1, rounds)


def test_hot_path_handles_many_messages_quickly():
    import time

    rng = random.Random(7)
    arrivals = random_arrivals(rng, 3, 30_000)
    policy = ApproximateTimePolicy(3, 100)
    started = time.perf_counter()
    for index, (topic, stamp) in enumerate(arrivals):
        policy.add(topic, stamp, index)
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"30k adds took {elapsed:.2f} s"
