"""PendingCalls: each reply finds its call once, and nothing outstanding is ever lost track of."""

from __future__ import annotations

from brubeckservice.correlation import Call, PendingCalls
from brubeckservice.envelope import MAX_ID_SIZE


def test_ids_are_unique_and_fit_the_envelope() -> None:
    calls = PendingCalls()
    ids = [calls.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(0 < len(msg_id) <= MAX_ID_SIZE for msg_id in ids)


def test_ids_share_no_pattern_a_peer_could_extend() -> None:
    # Counted ids ("<prefix>-1", "-2", ...) let a peer that saw one name the next call's; random ones do not.
    ids = [PendingCalls().new_id() for _ in range(2)] + [PendingCalls().new_id() for _ in range(2)]
    calls = PendingCalls()
    ids += [calls.new_id() for _ in range(1000)]
    assert all(len(msg_id) == 16 and int(msg_id, 16) >= 0 for msg_id in ids)  # 64 bits, in hex
    for position in range(16):  # every digit varies from id to id (no common prefix, no counter's tail)
        assert len({msg_id[position] for msg_id in ids}) >= 12


def test_two_tables_never_issue_the_same_id() -> None:
    # A restarted client must not mistake a reply meant for its previous life for one of its own calls.
    first, second = PendingCalls(), PendingCalls()
    assert {first.new_id() for _ in range(100)}.isdisjoint({second.new_id() for _ in range(100)})


def test_a_call_is_found_once() -> None:
    calls = PendingCalls()
    call = Call("/echo")
    calls.add(b"id-1", call)
    assert len(calls) == 1
    assert calls.pop(b"id-1") is call
    assert calls.pop(b"id-1") is None
    assert len(calls) == 0


def test_an_unknown_id_finds_nothing() -> None:
    assert PendingCalls().pop(b"never-sent") is None


def test_expire_returns_only_outstanding_calls_past_their_expiry_in_order() -> None:
    calls = PendingCalls()
    late, early, answered, later = Call("/late"), Call("/early"), Call("/answered"), Call("/later")
    calls.add(b"late", late, expires_at=20.0)
    calls.add(b"early", early, expires_at=10.0)
    calls.add(b"answered", answered, expires_at=5.0)
    calls.add(b"later", later, expires_at=30.0)
    calls.add(b"sync", Call("/sync"))  # no expiry: its caller times it out itself
    calls.pop(b"answered")
    assert calls.next_expiry() == 5.0
    assert calls.expire(25.0) == [(b"early", early), (b"late", late)]
    assert calls.next_expiry() == 30.0
    assert [msg_id for msg_id, _ in calls] == [b"later", b"sync"]
    assert calls.expire(25.0) == []


class FakeWorker:
    def __init__(self) -> None:
        self.inflight = 0


def test_sent_and_answered_calls_keep_the_worker_count() -> None:
    # The count of calls in flight per worker changes only here, with the call's state.
    calls, worker, other = PendingCalls(), FakeWorker(), FakeWorker()
    for msg_id in (b"1", b"2", b"3"):
        call = Call("/")
        calls.add(msg_id, call, expires_at=10.0)
        calls.sent(msg_id, call, worker, now=0.0)
    assert worker.inflight == 3
    assert calls.answer(b"1", other, b"REQ") is None  # not from the worker it went to
    assert calls.answer(b"1", worker, b"PING") is None  # a PONG never completes a request
    assert worker.inflight == 3
    assert calls.answer(b"1", worker, b"REQ") is not None
    assert calls.answer(b"1", worker, b"REQ") is None  # once
    calls.pop(b"2")
    assert worker.inflight == 1
    expired = calls.expire(11.0)
    assert [(msg_id, call.worker) for msg_id, call in expired] == [(b"3", worker)]
    assert worker.inflight == 0


def test_a_lost_worker_fails_its_calls_and_queues_idempotent_ones_again_once() -> None:
    calls, lost, kept = PendingCalls(), FakeWorker(), FakeWorker()
    plain, safe, elsewhere = Call("/plain"), Call("/safe", idempotent=True), Call("/elsewhere")
    for msg_id, call, worker in ((b"p", plain, lost), (b"s", safe, lost), (b"e", elsewhere, kept)):
        calls.add(msg_id, call)
        calls.sent(msg_id, call, worker, now=0.0)
    resent, failed = calls.lose(lost)
    assert (resent, failed) == ([(b"s", safe)], [(b"p", plain)])
    assert (lost.inflight, kept.inflight, calls.waiting) == (0, 1, 1)
    assert calls.first_waiting() == (b"s", safe)
    calls.sent(b"s", safe, kept, now=1.0)
    assert (kept.inflight, calls.waiting, calls.first_waiting()) == (2, 0, None)
    resent, failed = calls.lose(kept)  # sent twice already: no third time
    assert resent == [] and {msg_id for msg_id, _ in failed} == {b"s", b"e"}
    assert (kept.inflight, len(calls)) == (0, 0)


def test_the_queue_is_fifo_and_skips_calls_that_left() -> None:
    calls = PendingCalls()
    queued = [Call(f"/{n}") for n in range(4)]
    for n, call in enumerate(queued):
        calls.add(b"%d" % n, call, expires_at=5.0 if n == 1 else 50.0)
        calls.hold(b"%d" % n, call)
    assert calls.waiting == 4
    calls.pop(b"0")
    calls.expire(6.0)  # /1 gives up while waiting
    assert calls.waiting == 2
    assert calls.first_waiting() == (b"2", queued[2])
    calls.sent(b"2", queued[2], FakeWorker(), now=0.0)
    assert calls.first_waiting() == (b"3", queued[3])
    assert calls.waiting == 1


def test_drain_takes_everything() -> None:
    calls = PendingCalls()
    calls.add(b"1", Call("/1"), expires_at=1.0)
    calls.add(b"2", Call("/2"))
    calls.hold(b"2", calls.get(b"2"))  # type: ignore[arg-type]
    assert [msg_id for msg_id, _ in calls.drain()] == [b"1", b"2"]
    assert (len(calls), calls.waiting, calls.first_waiting()) == (0, 0, None)
    assert calls.next_expiry() is None


def test_iterating_is_safe_while_calls_come_and_go() -> None:
    calls = PendingCalls()
    for index in range(3):
        calls.add(b"%d" % index, Call("/"))
    for msg_id, _ in calls:
        calls.pop(msg_id)
        calls.add(msg_id + b"-again", Call("/"))
    assert len(calls) == 3


def test_on_empty_is_called_whenever_the_last_call_goes() -> None:
    # What a closing client waits on: every way a call leaves the table (reply, timeout, drain) counts.
    calls = PendingCalls()
    emptied: list[int] = []
    calls.on_empty = lambda: emptied.append(len(calls))
    second = Call("/2")
    calls.add(b"1", Call("/1"))
    calls.add(b"2", second, expires_at=1.0)
    calls.pop(b"1")
    assert emptied == []  # one is still out
    assert calls.expire(2.0) == [(b"2", second)]
    assert emptied == [0]
    calls.add(b"3", Call("/3"))
    calls.pop(b"unknown")
    assert emptied == [0]  # nothing left the table
    calls.drain()
    assert emptied == [0, 0]


def test_a_call_is_outstanding_until_it_leaves() -> None:
    calls = PendingCalls()
    calls.add(b"1", Call("/1"))
    assert b"1" in calls
    calls.pop(b"1")
    assert b"1" not in calls


def test_a_call_that_did_not_leave_after_all_is_queued_again_and_in_no_flight() -> None:
    calls, worker = PendingCalls(), FakeWorker()
    queued, unlucky = Call("/queued"), Call("/unlucky")
    calls.add(b"q", queued)
    calls.hold(b"q", queued)
    calls.add(b"u", unlucky)
    unlucky.frames = [b"built with an old sequence number"]
    calls.sent(b"u", unlucky, worker, now=0.0)
    assert calls.unsent(b"u", unlucky)
    assert worker.inflight == 0 and unlucky.worker is None and unlucky.attempts == 0
    assert unlucky.frames == [b"built with an old sequence number"]  # (the client decides whether to rebuild)
    assert calls.waiting == 2
    assert calls.first_waiting() == (b"q", queued)
    calls.pop(b"q")
    assert calls.first_waiting() == (b"u", unlucky)
    calls.pop(b"u")
    assert not calls.unsent(b"u", unlucky)  # gone (answered, expired, given up): nothing to undo
    assert calls.first_waiting() is None


def test_a_forked_child_never_issues_its_parents_next_ids() -> None:
    import os

    calls = PendingCalls()
    calls.new_id()  # the parent has ids buffered
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, b"".join(PendingCalls().new_id() for _ in range(4)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 4 * 16)
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(calls.new_id() for _ in range(4))
    assert len(child) == 64 and child != parent
    assert not {child[i:i + 16] for i in range(0, 64, 16)} & {parent[i:i + 16] for i in range(0, 64, 16)}
