"""The CUDA path without a GPU: the embedder's batching under the CUDA DeviceConfig, out-of-memory halving,
and questions first on a shared device.

`choose_device` itself is covered in test_device.py (auto/explicit CUDA, the missing-GPU error). Here the
configuration it returns on a GPU is kept, except that tensors stay on the CPU; the model's forward is a
fake device that records each pass's padded shape and raises `torch.cuda.OutOfMemoryError` above a batch
size, so tokenizing, length sorting, budget planning, padding, halving and reordering are the real code.
The priority tests run the real bundled model with a real lock file and a question holder in another
process (tests/unit/gatepeer.py); their order is read from an event log both sides append to.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from sentence_transformers import SentenceTransformer

from common.settings import OFFLINE_EMBEDDING_MODEL, Settings
from tests.unit.gatepeer import DEADLINE_S, QuestionPeer, WatchedGate, events, log_event
from workers import device
from workers import embedder as embedder_module
from workers.device import DeviceConfig, choose_device
from workers.embedder import SentenceTransformerEmbedder, build_model, load_embedder, resolve_model_path
from workers.gate import check_points

WORDS = ["cat", "dog", "fish", "bird", "seal", "bear", "wolf", "newt", "crab", "moth"]


def cuda_config_on_cpu(settings: Settings) -> DeviceConfig:
    """What choose_device gives a GPU worker, with the tensors kept on the CPU of this machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "cuda_available", lambda: True)
        config = choose_device(settings)
    assert (config.device, config.dtype, config.token_budget) == (
        "cuda",
        torch.float16,
        settings.cuda_token_budget,
    )
    return dataclasses.replace(config, device="cpu")


class FakeDevice:
    """The model's forward on a small GPU: a position-weighted sum of a fixed random embedding of each real
    token (so every text has its own vector, padding excluded), records (rows, width) per pass, runs out
    of memory above `oom_above` rows."""

    def __init__(self, vocab: int, oom_above: int | None = None) -> None:
        self.table = torch.randn(vocab, 16, generator=torch.Generator().manual_seed(0))
        self.oom_above = oom_above
        self.passes: list[tuple[int, int]] = []

    def __call__(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = features["input_ids"], features["attention_mask"]
        self.passes.append((int(ids.shape[0]), int(ids.shape[1])))
        if self.oom_above is not None and len(ids) > self.oom_above:
            raise torch.cuda.OutOfMemoryError(f"fake: {len(ids)} rows of {ids.shape[1]} tokens")
        weights = mask.float() * torch.arange(1, ids.shape[1] + 1)  # padding is on the right
        summed = torch.nn.functional.embedding_bag(ids, self.table, per_sample_weights=weights, mode="sum")
        return {"sentence_embedding": summed}

    def expected(self, embedder: SentenceTransformerEmbedder, texts: list[str]) -> npt.NDArray[np.float32]:
        """Each text's vector computed alone, straight from the tokenizer: the oracle for order."""
        rows = []
        for text in texts:
            ids = embedder._tokenizer(text, truncation=True, max_length=embedder.max_tokens)["input_ids"]
            weights = torch.arange(1, len(ids) + 1, dtype=torch.float32)[:, None]
            rows.append(torch.nn.functional.normalize((self.table[ids] * weights).sum(0), dim=-1).numpy())
        return np.stack(rows)


@pytest.fixture(scope="module")
def st_model() -> SentenceTransformer:
    return build_model(resolve_model_path(OFFLINE_EMBEDDING_MODEL), "cpu")


def fake_gpu_embedder(
    model: SentenceTransformer,
    config: DeviceConfig,
    monkeypatch: pytest.MonkeyPatch,
    oom_above: int | None = None,
) -> tuple[SentenceTransformerEmbedder, FakeDevice]:
    embedder = SentenceTransformerEmbedder(model, OFFLINE_EMBEDDING_MODEL, config)
    assert embedder._tokenizer.padding_side == "right"  # FakeDevice's position weights assume it
    fake = FakeDevice(embedder._tokenizer.vocab_size, oom_above)
    monkeypatch.setattr(embedder, "_model", fake)
    return embedder, fake


def texts_of(lengths: list[int]) -> list[str]:
    """Different texts of exactly `length` tokens each ([CLS], four words spelling the index in WORDS,
    filler, [SEP]; truncation keeps the first 256), in the given (unsorted) order."""
    texts = []
    for i, n in enumerate(lengths):
        digits = [WORDS[i // 10**k % 10] for k in (3, 2, 1, 0)]
        texts.append(" ".join(digits + [WORDS[i % 10]] * (n - 6)))
    return texts


def test_cuda_budget_cuts_passes_and_input_order_comes_back(
    st_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # embed_max_batch above the 65,536 / 256 = 256 texts the CUDA budget allows for the longest texts,
    # so the budget, not the count, cuts the passes of long texts.
    config = cuda_config_on_cpu(Settings(embed_max_batch=1_000, cuda_token_budget=65_536))
    embedder, fake = fake_gpu_embedder(st_model, config, monkeypatch)
    rng = np.random.default_rng(7)
    lengths = [int(n) for n in rng.permutation([300] * 600 + [100] * 500 + [20] * 900)]
    texts = texts_of(lengths)
    vectors = embedder.embed_documents(texts)
    np.testing.assert_allclose(vectors, fake.expected(embedder, texts), atol=1e-5)
    assert all(
        rows * width <= config.token_budget and rows <= config.max_batch for rows, width in fake.passes
    )
    # Longest first, widths padded to a multiple of 16 in fp16: 600 truncated texts fill two passes of
    # 65,536 // 256 rows and start a third, which 168 texts of 100 tokens complete; the other 332 and 253
    # of 20 tokens make 65,536 // 112 rows at width 112, and the last 647 of 20 tokens fit in one pass of 32.
    assert config.pad_multiple == 16
    assert fake.passes == [(256, 256)] * 3 + [(585, 112), (647, 32)]


def test_default_cuda_config_caps_passes_at_max_batch(
    st_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    embedder, fake = fake_gpu_embedder(st_model, cuda_config_on_cpu(settings), monkeypatch)
    texts = texts_of([256] * 300)
    np.testing.assert_allclose(embedder.embed_documents(texts), fake.expected(embedder, texts), atol=1e-5)
    assert fake.passes == [(settings.embed_max_batch, 256)] * 2 + [(300 - 2 * settings.embed_max_batch, 256)]


@pytest.mark.parametrize(
    ("oom_above", "rows"),
    [
        (2, [7, 3, 1, 2, 4, 2, 2]),
        (1, [7, 3, 1, 2, 1, 1, 4, 2, 1, 1, 2, 1, 1]),
    ],
)
def test_out_of_memory_halves_down_to_single_texts_and_keeps_order(
    st_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch, oom_above: int, rows: list[int]
) -> None:
    embedder, fake = fake_gpu_embedder(st_model, cuda_config_on_cpu(Settings()), monkeypatch, oom_above)
    texts = texts_of([40, 12, 200, 7, 90, 300, 25])
    np.testing.assert_allclose(embedder.embed_documents(texts), fake.expected(embedder, texts), atol=1e-5)
    assert [n for n, _ in fake.passes] == rows
    assert fake.passes[0] == (7, 256)  # one pass planned; the halves were the fallback


@pytest.mark.parametrize("count", [1, 5])
def test_a_single_text_that_still_runs_out_of_memory_raises(
    st_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    embedder, fake = fake_gpu_embedder(st_model, cuda_config_on_cpu(Settings()), monkeypatch, oom_above=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        embedder.embed_documents(texts_of([30] * count))
    assert fake.passes[-1][0] == 1


@pytest.mark.parametrize("cuda", [True, False])
def test_cache_is_emptied_after_out_of_memory_only_with_cuda(
    st_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch, cuda: bool
) -> None:
    embedder, fake = fake_gpu_embedder(st_model, cuda_config_on_cpu(Settings()), monkeypatch, oom_above=1)
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(fake.passes)))
    embedder.embed_documents(texts_of([40, 12, 200, 7, 90, 300, 25]))
    failed_splits = [i + 1 for i, (rows, _) in enumerate(fake.passes) if rows > 1]
    assert emptied == (failed_splits if cuda else [])  # once after each failed multi-text pass


def test_load_embedder_casts_the_model_to_the_cuda_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = load_embedder(Settings(device="cpu", cpu_bf16=False)).embed_documents(texts_of([9, 40]))
    monkeypatch.setattr(embedder_module, "choose_device", cuda_config_on_cpu)
    half = load_embedder(Settings(device="cuda"))
    assert {p.dtype for p in half._model.parameters()} == {torch.float16}
    vectors = half.embed_documents(texts_of([9, 40]))
    assert vectors.dtype == np.float32
    assert (vectors * reference).sum(axis=1).min() > 0.99


# --- questions first: the real model, a real lock file, the question side in another process ---


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[tuple[SentenceTransformerEmbedder, WatchedGate, Any]]:
    """The ingest worker's embedder under the CUDA batching config, its gate and the model to observe."""
    gate = WatchedGate(tmp_path / "device.lock")
    model = build_model(resolve_model_path(OFFLINE_EMBEDDING_MODEL), "cpu")
    embedder = SentenceTransformerEmbedder(
        model, OFFLINE_EMBEDDING_MODEL, cuda_config_on_cpu(Settings()), gate=gate
    )
    assert embedder.gate_points == 36
    yield embedder, gate, model


def test_ingest_forward_starts_only_after_the_question_side_releases(
    ingest: tuple[SentenceTransformerEmbedder, WatchedGate, Any], tmp_path: Path
) -> None:
    embedder, gate, model = ingest
    log = tmp_path / "events"
    check_points(model)[0].register_forward_hook(lambda *_: log_event(log, "ingest-multiply"))
    with QuestionPeer(gate.path, log) as peer, ThreadPoolExecutor(1) as pool:
        peer.hold()
        vectors = pool.submit(embedder.embed_documents, texts_of([20, 60, 9]))
        assert gate.polling.wait(DEADLINE_S)
        assert not vectors.done() and events(log) == ["question-held"]
        peer.release()
        assert vectors.result(DEADLINE_S).shape == (3, 384)
    assert events(log) == ["question-held", "question-released", "ingest-multiply"]


def test_a_question_arriving_mid_pass_waits_only_for_the_multiply_in_progress(
    ingest: tuple[SentenceTransformerEmbedder, WatchedGate, Any], tmp_path: Path
) -> None:
    embedder, gate, model = ingest
    log = tmp_path / "events"
    points = check_points(model)
    at_point = threading.Event()
    with QuestionPeer(gate.path, log) as peer:

        def multiply_14_runs(*_: Any) -> None:
            """After its own check (layer 2's value projection): the question arrives while it computes."""
            log_event(log, "ingest-multiply14")
            at_point.set()
            assert peer.held.wait(DEADLINE_S)

        points[14].register_forward_pre_hook(multiply_14_runs)  # after the gate's hook: hooks run in order
        points[15].register_forward_pre_hook(lambda *_: log_event(log, "ingest-multiply15"))
        with ThreadPoolExecutor(1) as pool:
            vectors = pool.submit(embedder.embed_documents, texts_of([20, 60, 9]))
            assert at_point.wait(DEADLINE_S)
            peer.hold()
            assert gate.polling.wait(DEADLINE_S)  # multiply 14 done, 15's check finds the question
            assert not vectors.done() and events(log) == ["ingest-multiply14", "question-held"]
            peer.release()
            assert vectors.result(DEADLINE_S).shape == (3, 384)
    assert events(log) == ["ingest-multiply14", "question-held", "question-released", "ingest-multiply15"]
