"""workers.gate with real processes and a real lock file: questions hold the device, bulk work gives way.

Another process holding `DeviceGate.questions()` is a forked child (tests/unit/gatepeer.py); every ordering
claim is read from an event log both sides append to, and the tests wait on events and a deadline, never
on a sleep. The hooks are checked on the real bundled model.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from common.settings import OFFLINE_EMBEDDING_MODEL
from tests.unit.gatepeer import (
    DEADLINE_S,
    QuestionPeer,
    WatchedGate,
    events,
    log_event,
    seen_from_another_process,
)
from workers import embedder as embedder_module
from workers.device import DeviceConfig
from workers.embedder import SentenceTransformerEmbedder, build_model, resolve_model_path
from workers.gate import DeviceGate, NoGate, check_points, install_give_way, transformer_layers

TEXTS = ["Cats eat fish.", "The mitochondria is the powerhouse of the cell.", "x"]


class RecordingGate(DeviceGate):
    """A real gate that also records each give_way call among the layers' own events."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.trace: list[str] = []

    def give_way(self) -> float:
        self.trace.append("give_way")
        return super().give_way()


def give_way_then_log(gate: DeviceGate, log: Path) -> float:
    waited = gate.give_way()
    log_event(log, "bulk-resumed")
    return waited


@pytest.fixture
def bulk() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="bulk") as pool:
        yield pool


def held_while_bulk_polls(
    peer: QuestionPeer, gate: WatchedGate, log: Path, bulk: ThreadPoolExecutor
) -> Future[float]:
    """The peer holds the device; the bulk thread's give_way is inside its poll loop, not done."""
    peer.hold()
    resumed: Future[float] = bulk.submit(give_way_then_log, gate, log)
    assert gate.polling.wait(DEADLINE_S)
    assert not resumed.done()
    return resumed


def test_give_way_waits_until_another_process_releases_its_questions(
    tmp_path: Path, bulk: ThreadPoolExecutor
) -> None:
    path, log = tmp_path / "device.lock", tmp_path / "events"
    gate = WatchedGate(path, bulk_share=0.5)
    with QuestionPeer(path, log) as peer:
        resumed = held_while_bulk_polls(peer, gate, log, bulk)
        assert events(log) == ["question-held"]
        peer.release()
        waited = resumed.result(DEADLINE_S)
    assert events(log) == ["question-held", "question-released", "bulk-resumed"]
    assert 0 < waited < gate.max_wait_s  # ended by the release, not by the bound
    assert gate.waited_s == waited
    assert gate.ran_through_s == 0 and not gate.running_through()  # a question that let go owes nothing


def test_give_way_returns_at_once_without_a_holder(tmp_path: Path) -> None:
    path, log = tmp_path / "device.lock", tmp_path / "events"
    gate = DeviceGate(path)
    assert gate.give_way() == 0.0  # the no-wait branch: one non-blocking check, no poll
    with QuestionPeer(path, log) as peer:
        peer.hold()
        assert gate.questions_waiting()
    assert not peer.process.is_alive()
    assert gate.give_way() == 0.0 and gate.waited_s == 0.0
    assert not seen_from_another_process(path)


def test_a_holder_killed_by_sigkill_releases_the_gate(tmp_path: Path, bulk: ThreadPoolExecutor) -> None:
    path, log = tmp_path / "device.lock", tmp_path / "events"
    gate = WatchedGate(path)
    with QuestionPeer(path, log) as peer:
        resumed = held_while_bulk_polls(peer, gate, log, bulk)
        os.kill(peer.process.pid or 0, signal.SIGKILL)  # no finally, no unlock: only the kernel drops it
        peer.process.join(DEADLINE_S)
        assert peer.process.exitcode == -signal.SIGKILL
        waited = resumed.result(DEADLINE_S)
    assert events(log) == ["question-held", "bulk-resumed"]  # never released by the peer itself
    assert waited < gate.max_wait_s
    assert not gate.questions_waiting()


def test_the_questions_process_never_waits_for_itself(tmp_path: Path) -> None:
    path = tmp_path / "device.lock"
    gate = DeviceGate(path, max_wait_s=100 * DEADLINE_S)
    with gate.questions():
        assert not gate.questions_waiting()
        assert gate.give_way() == 0.0
        assert seen_from_another_process(path)
    assert gate.waited_s == 0.0
    assert not seen_from_another_process(path)


def test_nested_questions_share_one_lock(tmp_path: Path) -> None:
    path = tmp_path / "device.lock"
    gate = DeviceGate(path)
    with gate.questions():
        with gate.questions():
            assert seen_from_another_process(path)
        assert seen_from_another_process(path)  # the inner exit must not unlock the outer batch
    assert not seen_from_another_process(path)
    with pytest.raises(RuntimeError), gate.questions():
        raise RuntimeError("a failed batch")
    assert not seen_from_another_process(path)


def _answer(gate: DeviceGate, inside: threading.Event, leave: threading.Event) -> None:
    with gate.questions():
        inside.set()
        assert leave.wait(DEADLINE_S)


def test_concurrent_questions_in_threads_share_one_lock(tmp_path: Path) -> None:
    path = tmp_path / "device.lock"
    gate = DeviceGate(path)
    inside = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(2, thread_name_prefix="ask") as pool:
        first = pool.submit(_answer, gate, inside[0], leave[0])
        assert inside[0].wait(DEADLINE_S)
        second = pool.submit(_answer, gate, inside[1], leave[1])
        assert inside[1].wait(DEADLINE_S)  # entered while the first holds: no self-deadlock
        assert seen_from_another_process(path)
        leave[0].set()
        first.result(DEADLINE_S)
        assert seen_from_another_process(path)  # the second batch still holds the device
        leave[1].set()
        second.result(DEADLINE_S)
    assert not seen_from_another_process(path)


def test_max_wait_bounds_the_wait_for_a_peer_that_never_releases(tmp_path: Path) -> None:
    path, log = tmp_path / "device.lock", tmp_path / "events"
    gate = DeviceGate(path, max_wait_s=0.05)
    with QuestionPeer(path, log) as peer:
        peer.hold()
        first, second = gate.give_way(), gate.give_way()
        assert gate.questions_waiting()  # still held: the bound ended each wait, not a release
    assert first >= gate.max_wait_s and second >= gate.max_wait_s
    assert gate.waited_s == first + second
    assert gate.ran_through_s == 0  # no share: each bound lets one multiply through, then bulk waits again
    assert events(log) == ["question-held", "question-released"]


class Clock:
    """time.monotonic, plus a jump a test makes to the end of a slice (the waits themselves run for real)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


def test_a_peer_that_never_releases_cannot_stop_bulk_work_it_runs_its_share(tmp_path: Path) -> None:
    """A hung ask worker holds the device without a break: each wait that uses up its period's bound is
    followed by a slice in which bulk work runs without waiting, the rest of the period."""
    path, log = tmp_path / "device.lock", tmp_path / "events"
    clock = Clock()
    gate = DeviceGate(path, max_wait_s=0.05, bulk_share=0.2, clock=clock)
    assert gate.period_s == pytest.approx(0.05 / 0.8)  # share = (period - max wait) / period
    with QuestionPeer(path, log) as peer:
        peer.hold()
        first = gate.give_way()
        assert first >= gate.max_wait_s and gate.running_through()
        in_slice = [gate.give_way() for _ in range(36)]  # every multiply of a pass of the bundled model
        assert gate.questions_waiting()  # still held: the slice is not a release
        clock.ahead += gate.period_s  # the period is over
        assert not gate.running_through()
        again = gate.give_way()
    assert in_slice == [0.0] * 36 and again >= gate.max_wait_s
    assert gate.waited_s == first + again and 0 < gate.ran_through_s <= 2 * (gate.period_s - gate.max_wait_s)
    assert events(log) == ["question-held", "question-released"]


def test_a_flood_with_gaps_uses_up_the_periods_wait_in_pieces_then_bulk_runs_through(
    tmp_path: Path, bulk: ThreadPoolExecutor
) -> None:
    """Questions that come in batches with short gaps between them end each wait by a release, yet keep
    the device: the waits of one period add up to its bound, and then bulk runs through the rest of it."""
    path, log = tmp_path / "device.lock", tmp_path / "events"
    clock = Clock()
    gate = WatchedGate(path, max_wait_s=1.0, bulk_share=0.8, clock=clock)  # a 5 s period: 1 s of waits
    waits = []
    with QuestionPeer(path, log) as peer:
        for _ in range(2):  # two questions, each ended by a release: 0.4 s of the period's wait each
            resumed = held_while_bulk_polls(peer, gate, log, bulk)
            clock.ahead += 0.4
            peer.release()
            waits.append(resumed.result(DEADLINE_S))
            gate.polling.clear()
        assert not gate.running_through()  # 0.8 s of 1 s used: still questions first
        resumed = held_while_bulk_polls(peer, gate, log, bulk)
        clock.ahead += 0.4  # the third question outlasts what is left: the bound ends this wait
        waits.append(resumed.result(DEADLINE_S))
        assert gate.running_through() and gate.questions_waiting()
        assert gate.give_way() == 0.0  # while the third question still holds the device
    assert all(0.4 <= waited < 1.0 for waited in waits[:2]) and 0.2 <= waits[2] < 1.0
    assert events(log).count("question-released") == 3
    assert 3.0 < gate.ran_through_s < gate.period_s - gate.max_wait_s  # the rest of the 5 s period


@pytest.mark.parametrize(("wait", "share"), [(0.0, 0.2), (1.0, 1.0), (1.0, -0.1)])
def test_a_gate_refuses_a_share_or_wait_that_would_stop_either_side(wait: float, share: float) -> None:
    with pytest.raises(ValueError, match="bulk_share"):
        DeviceGate(Path("unused.lock"), max_wait_s=wait, bulk_share=share)


@pytest.fixture(scope="module")
def model_path() -> str:
    return resolve_model_path(OFFLINE_EMBEDDING_MODEL)


def test_install_give_way_hooks_every_multiply_of_every_layer_of_the_bundled_model(
    model_path: str, tmp_path: Path
) -> None:
    model = build_model(model_path, "cpu")
    before = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    layers = transformer_layers(model)
    assert len(layers) == model[0].auto_model.config.num_hidden_layers == 6
    points = check_points(model)
    per_layer = [[m for m in layer.modules() if isinstance(m, torch.nn.Linear)] for layer in layers]
    assert [len(linears) for linears in per_layer] == [6] * 6  # query, key, value, attention out, in, out
    assert points == [m for linears in per_layer for m in linears]
    gate = RecordingGate(tmp_path / "device.lock")
    assert install_give_way(model, gate) == len(points) == 36
    hooked = [m for m in model.modules() if m._forward_pre_hooks]
    assert len(hooked) == len(points) and all(any(m is p for p in points) for m in hooked)
    for i, point in enumerate(points):
        point.register_forward_hook(lambda *_, i=i: gate.trace.append(f"point{i}"))
    after = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)  # one forward pass
    assert gate.trace == [event for i in range(36) for event in ("give_way", f"point{i}")]
    np.testing.assert_allclose(after, before, atol=1e-6)  # the hooks leave the layers' inputs alone
    model.encode(TEXTS[:1], convert_to_numpy=True)
    assert gate.trace.count("give_way") == 2 * len(points)


def test_a_layer_without_multiplies_is_its_own_check_point() -> None:
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.ReLU()])
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(*blocks))
    model.blocks = blocks
    assert check_points(model) == [blocks[0][0], blocks[1]]  # the model's own first Linear is no layer's
    assert check_points(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []  # no layers: passes are the unit


def test_no_gate_installs_nothing(model_path: str) -> None:
    model = build_model(model_path, "cpu")
    assert install_give_way(model, NoGate()) == 0
    assert not [name for name, module in model.named_modules() if module._forward_pre_hooks]


def _gated_embedder(
    model: SentenceTransformer, gate: DeviceGate, max_batch: int
) -> SentenceTransformerEmbedder:
    config = DeviceConfig("cpu", torch.float32, token_budget=16_384, max_batch=max_batch)
    return SentenceTransformerEmbedder(model, OFFLINE_EMBEDDING_MODEL, config, gate=gate)


def test_ingest_embedder_gives_way_before_each_multiply_of_each_pass(model_path: str, tmp_path: Path) -> None:
    model = build_model(model_path, "cpu")
    gate = RecordingGate(tmp_path / "device.lock")
    embedder = _gated_embedder(model, gate, max_batch=2)
    assert embedder.gate_points == 36
    passes: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: passes.append(len(args[0]["input_ids"])))
    for i, layer in enumerate(transformer_layers(model)):
        layer.register_forward_hook(lambda *_, i=i: gate.trace.append(f"layer{i}"))
    texts = [f"{word} eat fish." for word in ("cats", "seals", "bears", "otters", "herons")]
    vectors = embedder.embed_documents(texts)
    assert vectors.shape == (5, 384) and passes == [2, 2, 1]  # N=5 texts, K=3 budgeted passes
    one_pass = [event for i in range(6) for event in ["give_way"] * 6 + [f"layer{i}"]]
    assert gate.trace == 3 * one_pass  # K * 36 checks, none more: the first multiply is the pass's check
    assert gate.waited_s == 0.0


def test_a_model_without_check_points_gives_way_before_each_pass(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedder_module, "install_give_way", lambda _model, _gate: 0)
    gate = RecordingGate(tmp_path / "device.lock")
    embedder = _gated_embedder(build_model(model_path, "cpu"), gate, max_batch=2)
    assert embedder.gate_points == 0
    embedder.embed_documents([f"{word} eat fish." for word in ("cats", "seals", "bears", "otters", "herons")])
    assert gate.trace == ["give_way"] * 3


def test_query_side_embeds_inside_its_own_questions_without_waiting(model_path: str, tmp_path: Path) -> None:
    path = tmp_path / "device.lock"
    gate = RecordingGate(path)
    embedder = _gated_embedder(build_model(model_path, "cpu"), gate, max_batch=128)
    with gate.questions():
        vectors = embedder.embed_queries(TEXTS)
        assert seen_from_another_process(path)
    assert vectors.shape == (len(TEXTS), 384)
    assert gate.trace.count("give_way") == 36 and gate.waited_s == 0.0


class _ObservedLock:
    """Stands in for DeviceGate._lock: tells the test when a thread finds it taken and must wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _PausedCheck(DeviceGate):
    """Pauses the bulk thread's questions_waiting() just before its flock: the window of the race."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._lock = _ObservedLock()  # type: ignore[assignment]
        self.armed, self.paused, self.go = False, threading.Event(), threading.Event()

    def _file(self) -> int:
        fd = super()._file()
        if self.armed and threading.current_thread().name.startswith("bulk"):
            self.armed = False
            self.paused.set()
            assert self.go.wait(DEADLINE_S)
        return fd


def test_a_bulk_check_in_one_thread_never_drops_questions_of_another(
    tmp_path: Path, bulk: ThreadPoolExecutor
) -> None:
    """Both threads flock the one open file description: the bulk side's LOCK_EX|LOCK_NB would convert the
    question's LOCK_SH and its LOCK_UN drop it, unless the check and questions() exclude each other."""
    path = tmp_path / "device.lock"
    gate = _PausedCheck(path)
    gate.armed = True
    inside, leave = threading.Event(), threading.Event()
    check = bulk.submit(gate.questions_waiting)
    assert gate.paused.wait(DEADLINE_S)
    with ThreadPoolExecutor(1, thread_name_prefix="ask") as ask:
        answered = ask.submit(_answer, gate, inside, leave)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not (inside.is_set() or gate._lock.contended.is_set()) and time.monotonic() < deadline:
                inside.wait(0.01)  # polls a condition: the question is in, or waits for the check to end
            gate.go.set()
            assert check.result(DEADLINE_S) is False
            assert inside.wait(DEADLINE_S)
            assert seen_from_another_process(path)  # the question still holds the device
        finally:
            gate.go.set()
            leave.set()
        answered.result(DEADLINE_S)
