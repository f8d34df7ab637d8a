"""The address book keeps sources apart, prefers what it saw itself and forgets what
does not pan out; usefulness tells silent neighbours from helpful ones."""

from __future__ import annotations

import pytest

from gossiplearn.peer.discovery import (
    FIRST_HAND,
    HEARSAY_TTL,
    RETRY_AFTER,
    SOURCE_FAILURES,
    AddressBook,
    Usefulness,
    decode_exchange,
    encode_exchange,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(capacity: int = 1024, quota: int = 64) -> tuple[AddressBook, FakeClock]:
    clock = FakeClock()
    return AddressBook("me", capacity, quota=quota, clock=clock), clock


def fill(target: AddressBook, source: str, count: int, prefix: str = "") -> None:
    for i in range(count):
        target.add(f"{prefix or source}-{i}", [f"/addr/{source}/{i}"], source=source)


def test_one_source_holds_at_most_its_quota_and_rolls_over_only_its_own() -> None:
    addresses, _ = book()
    addresses.add("boot", ["/addr/boot"])
    fill(addresses, "honest", 10)
    fill(addresses, "liar", 6372)  # what one attacker sent in the measured attack
    assert addresses.count_from("liar") == 64
    assert addresses.count_from("honest") == 10 and "boot" in addresses
    assert "liar-6371" in addresses and "liar-0" not in addresses  # its newest kept


def test_many_sources_cannot_fill_the_book_against_a_newcomer() -> None:
    addresses, _ = book(capacity=100, quota=64)
    addresses.add("boot", ["/addr/boot"])
    for sybil in range(10):
        fill(addresses, f"sybil{sybil}", 64)
    assert len(addresses) == 100 and "boot" in addresses  # first-hand never displaced
    fill(addresses, "honest", 5)
    assert addresses.count_from("honest") == 5  # displaced the largest sources' entries
    assert max(addresses.count_from(f"sybil{s}") for s in range(10)) <= 11


def test_a_full_source_cannot_displace_a_smaller_one() -> None:
    addresses, _ = book(capacity=20, quota=64)
    fill(addresses, "a", 10)
    fill(addresses, "b", 10)
    assert not addresses.add("b-new", ["/addr/b/new"], source="b")
    assert addresses.count_from("a") == 10


def test_hearsay_never_re_points_a_known_peer_but_first_hand_does() -> None:
    addresses, _ = book()
    addresses.add("p", ["/real"])
    addresses.add("p", ["/evil"], source="liar")
    assert addresses.addresses("p") == ["/real"]
    addresses.add("q", ["/told"], source="friend")
    addresses.add("q", ["/evil"], source="liar")
    assert addresses.addresses("q") == ["/told"] and addresses.source_of("q") == "friend"
    addresses.add("q", ["/seen"])
    assert addresses.addresses("q") == ["/seen"] and addresses.source_of("q") == FIRST_HAND
    assert addresses.count_from("friend") == 0


def test_first_hand_entries_displace_hearsay_when_full() -> None:
    addresses, _ = book(capacity=10)
    fill(addresses, "liar", 10)
    for i in range(10):
        assert addresses.add(f"seen-{i}", [f"/seen/{i}"])
    assert addresses.count_from("liar") == 0 and len(addresses) == 10


def test_dead_hearsay_is_forgotten_and_dead_first_hand_backs_off() -> None:
    addresses, clock = book()
    addresses.add("told", ["/x"], source="friend")
    addresses.failed("told")
    assert "told" not in addresses
    addresses.add("boot", ["/boot"])
    addresses.failed("boot")
    assert "boot" not in addresses.to_dial((), ())
    clock.now += RETRY_AFTER
    assert addresses.to_dial((), ()) == ["boot"]
    addresses.failed("boot")
    addresses.failed("boot")
    assert "boot" not in addresses


def test_a_source_whose_entries_keep_failing_is_banned() -> None:
    addresses, clock = book()
    fill(addresses, "liar", 40)
    for i in range(SOURCE_FAILURES):
        addresses.failed(f"liar-{i}")
    assert addresses.count_from("liar") == 0
    assert not addresses.add("liar-new", ["/x"], source="liar")
    clock.now += 601
    assert addresses.add("liar-new", ["/x"], source="liar")


def test_unreached_hearsay_expires() -> None:
    addresses, clock = book()
    addresses.add("told", ["/x"], source="friend")
    addresses.add("boot", ["/boot"])
    clock.now += HEARSAY_TTL + 1
    addresses.expire()
    assert "told" not in addresses and "boot" in addresses


def test_dial_order_prefers_useful_then_first_hand_then_useful_sources() -> None:
    addresses, _ = book()
    addresses.add("stranger", ["/s"], source="liar")
    addresses.add("friend-of-friend", ["/f"], source="friend")
    addresses.add("boot", ["/b"])
    addresses.add("helper", ["/h"])
    addresses.useful("helper")
    order = addresses.to_dial(exclude={"nobody"}, useful_sources={"friend"})
    assert order == ["helper", "boot", "friend-of-friend", "stranger"]
    assert addresses.shareable(10) == [("helper", ["/h"])]  # only proven peers are passed on


def test_usefulness_grace_period_and_least_useful() -> None:
    clock = FakeClock()
    usefulness = Usefulness(grace_rounds=5, grace_seconds=5.0, clock=clock)
    for peer in ("silent", "helper", "old-helper"):
        usefulness.joined(peer, 0)
    usefulness.model_from("old-helper", 0)
    clock.now += 10
    assert not usefulness.silent("silent", 4)  # not enough rounds yet
    usefulness.model_from("helper", 5)
    assert usefulness.silent("silent", 5) and not usefulness.silent("helper", 5)
    assert usefulness.least_useful_silent(["silent", "helper", "old-helper"], 5) == "silent"
    assert usefulness.useful() == {"helper", "old-helper"}
    assert not usefulness.silent("never-seen", 100)


def test_exchange_round_trip_and_bounds() -> None:
    entries = [(f"p{i}", [f"/a/{i}"]) for i in range(100)]
    decoded = decode_exchange(encode_exchange(entries))
    assert len(decoded) == 64 and decoded[0] == ("p0", ["/a/0"])
    with pytest.raises(Exception, match="peer-exchange"):
        decode_exchange(b"\x93\x01\x02\x03")
