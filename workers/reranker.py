"""Rerankers over hybrid-search candidates: MaxSim late interaction (cheap, CPU) or a cross-encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from sentence_transformers import CrossEncoder

from common.errors import ModelUnavailable
from common.settings import Settings
from common.types import Embedder, Ranked, Reranker
from workers.device import DeviceConfig, choose_device
from workers.embedder import plan_passes, run_halving
from workers.token_weights import Idf, token_weights

log = logging.getLogger(__name__)


def maxsim_scores(
    query_tokens: npt.NDArray[np.float32],
    passage_tokens: Sequence[npt.NDArray[np.float32]],
    weights: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Mean over query tokens of the best cosine to any passage token (vectors already unit length);
    with `weights` (one per query token, workers.token_weights) the weighted mean."""
    if not passage_tokens:
        return np.zeros(0, dtype=np.float32)
    width = max(1, *(len(p) for p in passage_tokens))
    padded = np.zeros((len(passage_tokens), width, query_tokens.shape[1]), dtype=np.float32)
    valid = np.zeros((len(passage_tokens), width), dtype=bool)
    for i, tokens in enumerate(passage_tokens):
        padded[i, : len(tokens)] = tokens
        valid[i, : len(tokens)] = True
    sims = padded @ query_tokens.T  # (passages, passage tokens, query tokens)
    sims[~valid] = -np.inf
    best = sims.max(axis=1)  # (passages, query tokens)
    best[~np.isfinite(best)] = 0.0  # a passage without tokens matches nothing
    if weights is not None and float(weights.sum()) > 0:
        weighted: npt.NDArray[np.float32] = ((best @ weights) / weights.sum()).astype(np.float32)
        return weighted
    scores: npt.NDArray[np.float32] = best.mean(axis=1).astype(np.float32)
    return scores


def fuse_ranks(model_scores: npt.NDArray[np.float32], k: int, weight: float = 1.0) -> npt.NDArray[np.float64]:
    """RRF of the given (best-first) input order and the model's order:
    1/(k+rank_in) + weight/(k+rank_model)."""
    n = len(model_scores)
    model_order = np.argsort(-model_scores, kind="stable")
    model_rank = np.empty(n, dtype=np.int64)
    model_rank[model_order] = np.arange(1, n + 1)
    input_rank = np.arange(1, n + 1)
    return 1.0 / (k + input_rank) + weight / (k + model_rank)


def top_ranked(scores: Sequence[float], model_scores: Sequence[float], top_k: int) -> list[Ranked]:
    """Best first; ties broken by model score, then input order, so results are deterministic."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -model_scores[i], i))
    return [Ranked(i, float(scores[i]), float(model_scores[i])) for i in order[: max(0, top_k)]]


RerankItem = tuple[str, Sequence[str]]  # (query, passages)


def _top(rankings: list[list[Ranked]], top_k: int) -> list[Ranked]:
    return rankings[0][: max(0, top_k)]


class MaxSimReranker:
    """Late interaction with the embedding model's own token vectors: no extra model in memory."""

    def __init__(self, embedder: Embedder, fusion_k: int | None, fusion_weight: float = 1.0) -> None:
        self.name = "maxsim"
        self._embedder = embedder
        self._fusion_k = fusion_k
        self._fusion_weight = fusion_weight

    def rerank(self, query: str, passages: Sequence[str], top_k: int) -> list[Ranked]:
        return _top(self.rerank_batch([(query, passages)]), top_k) if passages and top_k > 0 else []

    def rerank_batch(
        self, items: Sequence[RerankItem], idf: Sequence[Idf | None] | None = None
    ) -> list[list[Ranked]]:
        """Every query and every distinct passage of the batch go through the model in one call each. An
        item with an `idf` table weighs its query tokens by it and matches no special token of a passage."""
        tables = list(idf) if idf is not None else [None] * len(items)
        unique = list(dict.fromkeys(p for _, passages in items for p in passages))
        slot = {text: i for i, text in enumerate(unique)}
        passage_tokens = self._embedder.token_vectors(unique, query=False) if unique else []
        queries = [q for q, _ in items]
        query_tokens = self._embedder.token_vectors(queries, query=True) if items else []
        weighed = any(table is not None for table in tables)
        special = self._embedder.special_ids if weighed else frozenset()
        query_ids = self._embedder.token_ids(queries, query=True) if weighed else []
        # a weighed item matches no special token; the others see every token, whatever the batch holds
        plain = passage_tokens
        stripped = self._without(special, unique, passage_tokens) if weighed else plain
        rankings = []
        for n, ((_, passages), q_tokens) in enumerate(zip(items, query_tokens, strict=True)):
            table = tables[n]
            weights = token_weights(table, query_ids[n], special) if table is not None else None
            tokens = stripped if table is not None else plain
            model_scores = maxsim_scores(q_tokens, [tokens[slot[p]] for p in passages], weights)
            if self._fusion_k is None:
                scores: Sequence[float] = model_scores.tolist()
            else:
                scores = fuse_ranks(model_scores, self._fusion_k, self._fusion_weight).tolist()
            rankings.append(top_ranked(scores, model_scores.tolist(), len(passages)))
        return rankings

    def _without(
        self, special: frozenset[int], texts: Sequence[str], tokens: Sequence[npt.NDArray[np.float32]]
    ) -> list[npt.NDArray[np.float32]]:
        """Each text's token vectors but those of special tokens (token_ids is token_vectors' encoding)."""
        ids = self._embedder.token_ids(texts, query=False)
        return [
            t[np.asarray([i not in special for i in row], dtype=bool)]
            for t, row in zip(tokens, ids, strict=True)
        ]


class CrossEncoderReranker:
    """Scores (query, passage) pairs jointly; score = model_score = raw logit (no sigmoid)."""

    def __init__(self, model_name_or_path: str, device_config: DeviceConfig) -> None:
        self.name = f"cross-encoder:{model_name_or_path}"
        self._device = device_config
        self._model = CrossEncoder(
            model_name_or_path, device=device_config.device, activation_fn=torch.nn.Identity()
        )
        if device_config.dtype != torch.float32:
            self._model.to(device_config.dtype)
        self._model.eval()
        self.max_tokens = int(self._model.max_seq_length or self._model.tokenizer.model_max_length)

    def rerank(self, query: str, passages: Sequence[str], top_k: int) -> list[Ranked]:
        return _top(self.rerank_batch([(query, passages)]), top_k) if passages and top_k > 0 else []

    def rerank_batch(
        self, items: Sequence[RerankItem], idf: Sequence[Idf | None] | None = None
    ) -> list[list[Ranked]]:
        """All pairs of the batch, length-sorted into token-budgeted forward passes (`idf` is MaxSim's)."""
        pairs = [(query, passage) for query, passages in items for passage in passages]
        scores = self._score(pairs).tolist()
        rankings, start = [], 0
        for _, passages in items:
            values = scores[start : start + len(passages)]
            rankings.append(top_ranked(values, values, len(values)))
            start += len(passages)
        return rankings

    def _score(self, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float64]:
        scores = np.zeros(len(pairs), dtype=np.float64)
        if not pairs:
            return scores
        encoded = self._model.tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=self.max_tokens
        )
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(pairs)), key=lambda i: lengths[i], reverse=True)
        budget, max_batch = self._device.token_budget, self._device.max_batch
        for start, end in plan_passes([lengths[i] for i in order], budget, max_batch):
            batch = order[start:end]
            scores[batch] = run_halving(batch, lambda b: self._predict(pairs, b))
        return scores

    def _predict(self, pairs: Sequence[tuple[str, str]], batch: Sequence[int]) -> list[float]:
        chosen = [pairs[i] for i in batch]
        with torch.inference_mode():
            raw = self._model.predict(
                chosen, batch_size=len(chosen), convert_to_numpy=True, show_progress_bar=False
            )
        first_logit: list[float] = np.asarray(raw, dtype=np.float64).reshape(len(chosen), -1)[:, 0].tolist()
        return first_logit


def load_reranker(settings: Settings, embedder: Embedder, backend: str) -> Reranker:
    """A reranker of the given backend; the cross-encoder is the configured `reranker_model`."""
    if backend == "maxsim":
        return MaxSimReranker(embedder, settings.rerank_fusion_k, settings.rerank_fusion_weight)
    if backend != "cross-encoder":
        raise ValueError(f"unknown reranker backend {backend!r}")
    log.info("loading cross-encoder %s", settings.reranker_model)
    try:
        return CrossEncoderReranker(settings.reranker_model, choose_device(settings))
    except OSError as exc:  # not on disk and not downloadable (offline, wrong id)
        raise ModelUnavailable(f"cross-encoder {settings.reranker_model!r} cannot be loaded: {exc}") from exc
