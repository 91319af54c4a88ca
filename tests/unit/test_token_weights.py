"""Token IDF for the MaxSim reranker: the table, the weights, the cache, and weighted MaxSim by hand and on
the bundled model (a question's rare term outweighs its common words)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from common.settings import Settings
from workers.embedder import SentenceTransformerEmbedder, load_embedder
from workers.reranker import MaxSimReranker, fuse_ranks, maxsim_scores
from workers.token_weights import CollectionIdf, idf_table, token_weights

E1 = np.array([1.0, 0.0], dtype=np.float32)
E2 = np.array([0.0, 1.0], dtype=np.float32)


def test_idf_is_log_of_texts_over_texts_with_the_token() -> None:
    table = idf_table([[1, 2, 2], [2, 3], [2]])  # token 2 in all 3 texts, 1 and 3 in one each, 0 in none
    np.testing.assert_allclose(table, np.log([4 / 1, 4 / 2, 4 / 4, 4 / 2]), rtol=1e-6)


def test_weights_zero_special_tokens_and_make_unseen_ids_the_rarest() -> None:
    table = idf_table([[1, 2], [2]])
    weights = token_weights(table, [0, 2, 1, 99], special=frozenset({0}))
    assert weights[0] == 0.0 and weights[1] == pytest.approx(np.log(3 / 3))
    assert weights[3] >= weights[2] > weights[1]


def test_weighted_maxsim_by_hand() -> None:
    query = np.stack([E1, E2])
    passages = [np.stack([E1]), np.stack([E2])]
    np.testing.assert_allclose(maxsim_scores(query, passages), [0.5, 0.5])
    np.testing.assert_allclose(maxsim_scores(query, passages, np.array([3.0, 1.0], np.float32)), [0.75, 0.25])
    zero = np.zeros(2, np.float32)  # nothing to weigh by (only special tokens): the plain mean
    np.testing.assert_allclose(maxsim_scores(query, passages, zero), [0.5, 0.5])


def test_the_reranker_ranking_weighs_more_in_the_final_fusion() -> None:
    model = np.array([0.1, 0.9, 0.5], dtype=np.float32)  # model ranks 3, 1, 2; input ranks 1, 2, 3
    np.testing.assert_allclose(
        fuse_ranks(model, 1, weight=2.0), [1 / 2 + 2 / 4, 1 / 3 + 2 / 2, 1 / 4 + 2 / 3]
    )


class Store:
    def __init__(self, texts: list[str]) -> None:
        self.texts, self.reads = texts, 0

    def sample_texts(self, collection: str, limit: int) -> list[str]:
        self.reads += 1
        return self.texts[:limit]


class Ids:
    """Token ids: a text's words' lengths."""

    def token_ids(self, texts: Sequence[str], *, query: bool) -> list[list[int]]:
        return [[len(word) for word in text.split()] for text in texts]


def test_a_collections_table_is_built_once_per_ttl_and_the_least_recent_goes() -> None:
    now = [0.0]
    store = Store(["a bb", "bb ccc"])
    idf = CollectionIdf(store, Ids(), sample=10, ttl_s=60, keep=2, clock=lambda: now[0])  # type: ignore[arg-type]
    first = idf.table("c1")
    assert first is not None and first[2] < first[1]  # "bb" is in both texts, "a" in one
    idf.table("c1")
    assert store.reads == 1
    now[0] = 61.0
    idf.table("c1")  # stale: read again
    assert store.reads == 2
    idf.table("c2")
    idf.table("c3")  # over `keep`: c1, the least recently used, goes
    idf.table("c1")
    assert store.reads == 5


def test_an_empty_collection_has_no_table() -> None:
    idf = CollectionIdf(Store([]), Ids(), sample=10, ttl_s=60, keep=2)  # type: ignore[arg-type]
    assert idf.table("empty") is None


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return load_embedder(Settings(device="cpu", cpu_bf16=False))


def test_on_the_model_a_rare_question_term_outweighs_its_common_words(
    embedder: SentenceTransformerEmbedder,
) -> None:
    # Collection: many texts about "the effect of the treatment", one about "ivermectin".
    corpus = [f"the effect of the treatment on patients in study {n}" for n in range(40)]
    corpus.append("ivermectin dosage")
    table = idf_table(embedder.token_ids(corpus, query=False))
    question = "what is the effect of ivermectin"
    passages = ["the effect of the treatment on the patients", "ivermectin dosage in adults"]
    plain = MaxSimReranker(embedder, fusion_k=None).rerank_batch([(question, passages)])[0]
    weighted = MaxSimReranker(embedder, fusion_k=None).rerank_batch([(question, passages)], [table])[0]
    assert weighted[0].index == 1  # weighted, the passage with the rare term wins
    by_index = {r.index: r.model_score for r in weighted}
    plain_by_index = {r.index: r.model_score for r in plain}
    # and the margin moves towards it whatever the plain order was
    assert by_index[1] - by_index[0] > plain_by_index[1] - plain_by_index[0]


def test_without_tables_the_ranking_is_the_plain_one(embedder: SentenceTransformerEmbedder) -> None:
    items = [("cats eat meat", ["cats eat meat", "dogs bark"])]
    reranker = MaxSimReranker(embedder, fusion_k=60)
    assert reranker.rerank_batch(items) == reranker.rerank_batch(items, [None])


def test_an_unweighted_item_ranks_the_same_alone_and_beside_a_weighted_one(
    embedder: SentenceTransformerEmbedder,
) -> None:
    table = idf_table(embedder.token_ids(["cats eat meat", "dogs bark at night"], query=False))
    plain_item = ("cats eat meat", ["cats eat meat", "dogs bark"])
    reranker = MaxSimReranker(embedder, fusion_k=None)
    alone = reranker.rerank_batch([plain_item])[0]
    beside = reranker.rerank_batch([plain_item, ("dogs bark", ["dogs bark", "cats"])], [None, table])[0]
    assert [r.index for r in beside] == [r.index for r in alone]
    assert [r.model_score for r in beside] == pytest.approx([r.model_score for r in alone])
