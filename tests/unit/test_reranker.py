"""Rerankers: MaxSim on the bundled model, fusion arithmetic by hand, and the cross-encoder contract."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from common.errors import ModelUnavailable
from common.settings import OFFLINE_EMBEDDING_MODEL, Settings
from common.types import Ranked
from workers.device import DeviceConfig
from workers.embedder import SentenceTransformerEmbedder, load_embedder, resolve_model_path
from workers.reranker import (
    CrossEncoderReranker,
    MaxSimReranker,
    fuse_ranks,
    load_reranker,
    maxsim_scores,
)

QUESTION = "What do cats eat?"
PASSAGES = [
    "The stock market closed higher on Tuesday after strong earnings reports.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Cats are obligate carnivores: their diet is meat, and commercial cat food provides animal protein.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Rust's borrow checker enforces memory safety without garbage collection.",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return load_embedder(Settings(device="cpu", cpu_bf16=False))


class FixedTokens:
    """Embedder stand-in returning hand-made token vectors, so scores can be computed by hand."""

    model_name = "fixed"
    dimension = 2
    max_tokens = 8

    def __init__(self, query: npt.NDArray[np.float32], passages: Sequence[npt.NDArray[np.float32]]) -> None:
        self._query, self._passages = query, list(passages)

    def token_vectors(self, texts: Sequence[str], *, query: bool) -> list[npt.NDArray[np.float32]]:
        return [self._query] if query else self._passages[: len(texts)]


E1 = np.array([1.0, 0.0], dtype=np.float32)
E2 = np.array([0.0, 1.0], dtype=np.float32)


def test_maxsim_scores_by_hand_and_ignores_padding() -> None:
    query = np.stack([E1, E2])
    passages = [np.stack([E1]), np.stack([E1, E2]), np.stack([-E1])]
    # C has one token; zero padding up to width 2 must not lift its best match for E1 from -1 to 0.
    np.testing.assert_allclose(maxsim_scores(query, passages), [0.5, 1.0, -0.5])


def test_fusion_by_hand() -> None:
    # input ranks 1,2,3; model ranks 3,1,2 (k=1): 1/2+1/4, 1/3+1/2, 1/4+1/3
    np.testing.assert_allclose(
        fuse_ranks(np.array([0.1, 0.9, 0.5], dtype=np.float32), 1), [0.75, 5 / 6, 7 / 12]
    )


def test_maxsim_reranker_fused_scores_by_hand() -> None:
    query = np.stack([E1, E2])
    fake = FixedTokens(query, [np.stack([E1]), np.stack([E1, E2]), np.stack([-E1])])
    ranked = MaxSimReranker(fake, fusion_k=1).rerank("q", ["a", "b", "c"], top_k=3)  # type: ignore[arg-type]
    # index 0 and 1 tie on the fused score (5/6); the higher model score breaks the tie
    assert [r.index for r in ranked] == [1, 0, 2]
    np.testing.assert_allclose([r.score for r in ranked], [1 / 3 + 1 / 2, 1 / 2 + 1 / 3, 1 / 4 + 1 / 4])
    np.testing.assert_allclose([r.model_score for r in ranked], [1.0, 0.5, -0.5])
    assert all(isinstance(r, Ranked) for r in ranked)


def test_maxsim_puts_the_relevant_passage_first(embedder: SentenceTransformerEmbedder) -> None:
    ranked = MaxSimReranker(embedder, fusion_k=None).rerank(QUESTION, PASSAGES, top_k=3)
    assert len(ranked) == 3
    assert ranked[0].index == 2
    assert all(r.score == r.model_score for r in ranked)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_maxsim_fusion_contract(embedder: SentenceTransformerEmbedder) -> None:
    reranker = MaxSimReranker(embedder, fusion_k=60)
    ranked = reranker.rerank(QUESTION, PASSAGES, top_k=10)
    assert len(ranked) == len(PASSAGES)
    assert sorted(r.index for r in ranked) == list(range(len(PASSAGES)))
    by_model = sorted(range(len(ranked)), key=lambda i: -ranked[i].model_score)
    best = ranked[by_model[0]]
    assert best.index == 2 and best.score == pytest.approx(1 / 63 + 1 / 61)
    assert reranker.rerank(QUESTION, [], top_k=5) == []
    assert reranker.rerank(QUESTION, PASSAGES, top_k=0) == []


@pytest.fixture(scope="module")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's BERT body plus a seeded random 1-logit head, saved as a plain transformers checkpoint."""
    source = resolve_model_path(OFFLINE_EMBEDDING_MODEL)
    directory = tmp_path_factory.mktemp("models") / "tiny-cross-encoder"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def test_cross_encoder_contract(tiny_cross_encoder_dir: Path) -> None:
    """Contract only: the classification head is random, so these scores mean nothing about relevance."""
    config = DeviceConfig("cpu", torch.float32, token_budget=64, max_batch=2)  # forces several batches
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir), config)
    assert reranker.name == f"cross-encoder:{tiny_cross_encoder_dir}"
    ranked = reranker.rerank(QUESTION, PASSAGES, top_k=3)
    assert len(ranked) == 3
    indices = [r.index for r in ranked]
    assert len(set(indices)) == 3 and all(0 <= i < len(PASSAGES) for i in indices)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    assert all(r.score == r.model_score for r in ranked)
    assert reranker.rerank(QUESTION, PASSAGES, top_k=3) == ranked
    everything = reranker.rerank(QUESTION, PASSAGES, top_k=50)
    assert len(everything) == len(PASSAGES) and everything[:3] == ranked
    assert reranker.rerank(QUESTION, [], top_k=3) == []


def test_load_reranker_backends(embedder: SentenceTransformerEmbedder, tiny_cross_encoder_dir: Path) -> None:
    settings = Settings(reranker_model=str(tiny_cross_encoder_dir), device="cpu")
    maxsim = load_reranker(settings, embedder, "maxsim")
    assert isinstance(maxsim, MaxSimReranker) and maxsim.name == "maxsim"
    with pytest.raises(ValueError, match="unknown reranker"):
        load_reranker(settings, embedder, "magic")
    cross = load_reranker(settings, embedder, "cross-encoder")
    assert isinstance(cross, CrossEncoderReranker)
    assert cross.name == f"cross-encoder:{tiny_cross_encoder_dir}"


def test_a_cross_encoder_that_cannot_load_is_a_clear_domain_error(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    settings = Settings(reranker_model=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        load_reranker(settings, embedder, "cross-encoder")
