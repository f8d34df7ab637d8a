"""Signed records: keys bound to peer ids, SybilWall histories and MoDeST membership that
no peer can forge, and signatures that survive the wire."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.events import MessageReceived, Send, Start, TrainingDone
from gossiplearn.protocols.messages import spec_of
from gossiplearn.protocols.modest import ModestConfig, ModestCore
from gossiplearn.protocols.modest_messages import (
    Activity,
    Membership,
    MembershipAdvert,
    ModelKind,
    ModestModel,
    membership_of,
)
from gossiplearn.protocols.signing import (
    SIGNATURE_BYTES,
    PeerIdVerifier,
    SeedKeys,
    history_statement,
    membership_statement,
    params_digest,
    public_key_of_peer_id,
)
from gossiplearn.protocols.sybilwall import SybilWallConfig, SybilWallCore
from gossiplearn.protocols.sybilwall_messages import HistoryRecord
from gossiplearn.types import Params, PeerId

KEYS = SeedKeys(7)


def vec(*values: float) -> Params:
    return {"w": np.array(values, dtype=np.float32)}


# ---- keys and statements -------------------------------------------------------------


def test_seed_keys_are_reproducible_and_distinct() -> None:
    assert SeedKeys(7).public_key(3) == KEYS.public_key(3)
    assert SeedKeys(8).public_key(3) != KEYS.public_key(3)
    assert KEYS.public_key(3) != KEYS.public_key(4) != KEYS.public_key("4")


def test_a_signature_verifies_only_for_its_origin_and_statement() -> None:
    statement = membership_statement(3, 1, Membership.LEAVE)
    signature = KEYS.signer(3).sign(statement)
    assert len(signature) == SIGNATURE_BYTES
    assert KEYS.verifier.verify(3, statement, signature)
    assert KEYS.verifier.verify(3, statement, signature)  # the cached verdict agrees
    assert not KEYS.verifier.verify(4, statement, signature)  # someone else's key
    assert not KEYS.verifier.verify(3, membership_statement(3, 1, Membership.JOIN), signature)
    assert not KEYS.verifier.verify(3, statement, signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not KEYS.verifier.verify(3, statement, b"")
    assert not KEYS.verifier.verify(True, statement, signature)


def test_params_digest_covers_names_dtypes_shapes_and_values() -> None:
    base = params_digest({"w": np.zeros((2, 2), np.float32)})
    assert base == params_digest({"w": np.zeros((2, 2), np.dtype(">f4"))})  # byte order: no
    assert base != params_digest({"v": np.zeros((2, 2), np.float32)})
    assert base != params_digest({"w": np.zeros((4,), np.float32)})
    assert base != params_digest({"w": np.zeros((2, 2), np.float64)})
    assert base != params_digest({"w": np.eye(2, dtype=np.float32)})


def test_libp2p_peer_ids_carry_their_public_key() -> None:
    from gossiplearn.transport.libp2p import Libp2pTransport

    alice, bob = Libp2pTransport(), Libp2pTransport()
    statement = history_statement(alice.peer_id, 3, b"d" * 32)
    signature = alice.signer().sign(statement)
    verifier = PeerIdVerifier()
    assert verifier.verify(alice.peer_id, statement, signature)
    # A record claiming to come from bob but signed by alice: bob's id holds bob's key.
    assert not verifier.verify(bob.peer_id, statement, signature)
    assert public_key_of_peer_id(alice.peer_id) == alice._key_pair.public_key.to_bytes()
    for not_a_key_id in ("", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", 5):
        assert public_key_of_peer_id(not_a_key_id) is None
        assert not verifier.verify(not_a_key_id, statement, signature)


# ---- SybilWall: histories ------------------------------------------------------------


def sybilwall(me: PeerId, neighbours: list[PeerId]) -> SybilWallCore:
    config = SybilWallConfig(rounds=5, local_steps=1, merge_timeout=5.0)
    return SybilWallCore(
        me, config, neighbours, vec(0, 0, 0), np.random.default_rng(0),
        signer=KEYS.signer(me), verifier=KEYS.verifier,
    )  # fmt: skip


def signed_record(origin: PeerId, round_: int, params: Params, distance: int) -> HistoryRecord:
    statement = history_statement(origin, round_, params_digest(params))
    return HistoryRecord(round_, origin, distance, params, KEYS.signer(origin).sign(statement))


def test_sybilwall_pushes_its_model_signed() -> None:
    core = sybilwall(1, [2])
    core.handle(0.0, Start())
    effects = core.handle(0.0, TrainingDone(vec(1, 2, 3)))
    pushes = [e.message for e in effects if isinstance(e, Send) and e.message.distance == 0]
    assert len(pushes) == 1
    push = pushes[0]
    assert (push.origin, push.round) == (1, 1)
    assert KEYS.verifier.verify(1, push.statement, push.signature)


@pytest.mark.parametrize(
    "forge",
    [
        # signed by the relaying peer 9, claiming origin 5
        lambda r: dataclasses.replace(r, signature=KEYS.signer(9).sign(r.statement)),
        # genuine signature, history swapped for another
        lambda r: HistoryRecord(r.round, r.origin, r.distance, vec(9, 9, 9), r.signature),
        # genuine signature, a newer round claimed
        lambda r: HistoryRecord(r.round + 1, r.origin, r.distance, r.params, r.signature),
        # no signature at all
        lambda r: HistoryRecord(r.round, r.origin, r.distance, r.params),
    ],
    ids=["wrong key", "tampered history", "tampered round", "unsigned"],
)
def test_forged_history_records_are_rejected(forge: object) -> None:
    core = sybilwall(1, [9])
    genuine = signed_record(5, 3, vec(1, 2, 3), distance=2)
    core.handle(0.0, MessageReceived(9, forge(genuine)))  # type: ignore[operator]
    assert 5 not in core.records
    assert core.rejected["BadSignature"] == 1


def test_a_neighbour_cannot_push_a_model_as_someone_else() -> None:
    core = sybilwall(1, [9])
    record = signed_record(5, 3, vec(1, 2, 3), distance=0)  # 5's own model, sent by 9
    core.handle(0.0, MessageReceived(9, record))
    assert core.records == {} and core.pending == {}
    assert core.rejected["BadSignature"] == 1


def test_a_genuine_history_is_relayed_with_its_signature_and_accepted_downstream() -> None:
    origin, relay, receiver = 5, 1, 2
    relaying = sybilwall(relay, [origin, receiver])
    relaying.handle(0.0, MessageReceived(origin, signed_record(origin, 1, vec(1, 2, 3), 0)))
    assert relaying.rejected == {}
    relaying.handle(0.0, Start())
    effects = relaying.handle(0.0, TrainingDone(vec(0, 0, 1)))
    relayed = [
        e.message
        for e in effects
        if isinstance(e, Send) and e.to == receiver and e.message.distance > 0
    ]
    assert [(r.origin, r.distance) for r in relayed] == [(origin, 1)]
    wire = decode_message(encode(relayed[0]), spec_of(vec(0, 0, 0)))
    downstream = sybilwall(receiver, [relay])
    downstream.handle(0.0, MessageReceived(relay, wire))
    assert downstream.records[origin].distance == 2 and downstream.rejected == {}
    np.testing.assert_array_equal(downstream.records[origin].history["w"], [1, 2, 3])


def test_history_signatures_survive_the_wire() -> None:
    record = signed_record("12D3KooWabc", 4, vec(1.5, -2, 0), distance=3)
    decoded = decode_message(encode(record), spec_of(vec(0, 0, 0)))
    assert isinstance(decoded, HistoryRecord) and decoded.signature == record.signature
    assert decoded.statement == record.statement


# ---- MoDeST: membership ----------------------------------------------------------------


def modest(me: PeerId, members: list[PeerId]) -> ModestCore:
    config = ModestConfig(rounds=5, local_steps=1, sample_size=2)
    view = dict.fromkeys(members, Activity(0))
    return ModestCore(
        me, config, vec(0), view, np.random.default_rng(0),
        signer=KEYS.signer(me), verifier=KEYS.verifier,
    )  # fmt: skip


def signed_leave(peer: PeerId, index: int = 1) -> Activity:
    record = Activity(1, index, Membership.LEAVE)  # relays never raise activity past r̂
    return dataclasses.replace(
        record, signature=KEYS.signer(peer).sign(membership_of(peer, record))
    )


def model_with_view(view: dict[PeerId, Activity]) -> ModestModel:
    return ModestModel(ModelKind.AGGREGATED, 1, vec(0), 0, view)


def test_a_forged_leave_in_a_view_is_dropped() -> None:
    core = modest(1, [1, 2, 3])
    forged = dataclasses.replace(signed_leave(3), signature=KEYS.signer(2).sign(b"x"))
    unsigned = Activity(4, 1, Membership.LEAVE)
    core.handle(0.0, MessageReceived(2, model_with_view({3: forged})))
    core.handle(0.0, MessageReceived(2, model_with_view({3: unsigned})))
    assert core.view[3].status == Membership.JOIN
    assert core.rejected["BadSignature"] == 2


def test_a_genuine_leave_relayed_by_another_peer_is_applied() -> None:
    core = modest(1, [1, 2, 3])
    core.handle(0.0, MessageReceived(2, model_with_view({3: signed_leave(3)})))
    assert core.view[3].status == Membership.LEAVE and core.rejected == {}
    assert 3 not in core.candidates(2)
    # ... and relayed on with its signature, which the next peer checks again.
    snapshot = core.view_snapshot()
    wire = decode_message(encode(model_with_view(snapshot)), spec_of(vec(0)))
    assert isinstance(wire, ModestModel)
    downstream = modest(4, [1, 2, 3, 4])
    downstream.handle(0.0, MessageReceived(1, wire))
    assert downstream.view[3].status == Membership.LEAVE and downstream.rejected == {}


def test_adverts_must_be_signed_by_their_sender() -> None:
    core = modest(1, [1, 2, 3])
    record = signed_leave(3)
    good = MembershipAdvert(4, 1, Membership.LEAVE, record.signature)
    forged = MembershipAdvert(4, 1, Membership.LEAVE, KEYS.signer(2).sign(membership_of(3, good)))
    core.handle(0.0, MessageReceived(3, forged))  # 3's advert, but signed by 2
    assert core.view[3].status == Membership.JOIN and core.rejected["BadSignature"] == 1
    core.handle(0.0, MessageReceived(3, good))
    assert core.view[3].status == Membership.LEAVE


def test_a_leaving_peer_signs_its_advert() -> None:
    from gossiplearn.protocols.events import Leave

    core = modest(1, [1, 2, 3])
    adverts = [e.message for e in core.handle(0.0, Leave()) if isinstance(e, Send)]
    assert adverts and all(a.status == Membership.LEAVE for a in adverts)
    assert KEYS.verifier.verify(1, membership_of(1, adverts[0]), adverts[0].signature)
    decoded = decode_message(encode(adverts[0]), spec_of(vec(0)))
    assert isinstance(decoded, MembershipAdvert) and decoded.signature == adverts[0].signature


def test_a_libp2p_modest_peer_signs_with_its_transport_key() -> None:
    import torch

    from gossiplearn.peer import Peer, PeerConfig
    from gossiplearn.protocols.events import Leave
    from gossiplearn.transport.libp2p import Libp2pTransport
    from gossiplearn.transport.memory import InMemoryNetwork

    model = torch.nn.Linear(4, 2)
    data = (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    peer = Peer(model, data, config=PeerConfig(protocol="modest"), transport=Libp2pTransport())
    core = peer._make_core(peer.learner.params(), 0)  # white-box: no network needed
    assert isinstance(core, ModestCore) and isinstance(core.verifier, PeerIdVerifier)
    core.view["12D3KooWSomebodyElse"] = Activity(0)  # someone to tell
    adverts = [e.message for e in core.handle(0.0, Leave()) if isinstance(e, Send)]
    assert PeerIdVerifier().verify(peer.peer_id, membership_of(peer.peer_id, adverts[0]),
                                   adverts[0].signature)  # fmt: skip
    # On the in-memory transport, ids are names, not keys: nothing is signed or checked.
    memory = Peer(model, data, config=PeerConfig(protocol="modest"),
                  transport=InMemoryNetwork().transport("m"))  # fmt: skip
    plain = memory._make_core(memory.learner.params(), 0)
    assert isinstance(plain, ModestCore) and plain.signer is None and plain.verifier is None
