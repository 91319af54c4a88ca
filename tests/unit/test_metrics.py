"""Hand-computed checks of the BEIR metrics and of the harness's pure helpers (no service needed)."""

from __future__ import annotations

import math

import pytest

from bench import eval_beir
from bench.eval_beir import AskOutcome, batches, parse_qrels, select_queries, summarize, to_document
from bench.metrics import dedupe, evaluate, mrr_at_k, ndcg_at_k, percentile, recall_at_k

L3 = math.log2(3)  # discount at rank 2; rank 1 is log2(2) = 1, rank 3 is log2(4) = 2


# --- dedupe -------------------------------------------------------------------------------------


def test_dedupe_keeps_first_occurrence_in_order() -> None:
    assert dedupe(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
    assert dedupe([]) == []


# --- nDCG ---------------------------------------------------------------------------------------


def test_ndcg_perfect_and_empty() -> None:
    rels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k([], rels, 10) == 0.0
    assert ndcg_at_k(["x", "y"], rels, 10) == 0.0


def test_ndcg_binary_second_rank() -> None:
    assert ndcg_at_k(["x", "a"], {"a": 1}, 10) == pytest.approx(1 / L3)


def test_ndcg_graded_uses_linear_gain() -> None:
    # DCG = 1/1 + 0/log2(3) + 2/log2(4) = 2 ; IDCG = 2/1 + 1/log2(3)
    rels = {"a": 2, "b": 1, "c": 0}
    expected = 2 / (2 + 1 / L3)
    assert ndcg_at_k(["b", "c", "a"], rels, 10) == pytest.approx(expected)
    exponential = (1 + 3 / 2) / (3 + 1 / L3)  # what 2^rel - 1 gains would give; must differ
    assert ndcg_at_k(["b", "c", "a"], rels, 10) != pytest.approx(exponential)


def test_ndcg_ideal_is_cut_at_k() -> None:
    # three relevant docs, k = 2: IDCG@2 = 1 + 1/log2(3), only "a" retrieved at rank 1
    assert ndcg_at_k(["a"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / (1 + 1 / L3))


def test_ndcg_relevant_beyond_k_counts_nothing() -> None:
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0


def test_ndcg_duplicate_chunks_collapse_before_cut() -> None:
    # chunks of "x" twice: as documents the ranking is [x, a], so "a" sits at rank 2 within k = 2
    assert ndcg_at_k(["x", "x", "a"], {"a": 1}, 2) == pytest.approx(1 / L3)


def test_ndcg_no_relevant_judgment_is_zero() -> None:
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0
    assert ndcg_at_k(["a"], {}, 10) == 0.0


# --- recall -------------------------------------------------------------------------------------


def test_recall_ignores_zero_scores_and_counts_graded_as_relevant() -> None:
    rels = {"a": 1, "b": 2, "c": 0}
    assert recall_at_k(["c", "a", "x"], rels, 2) == pytest.approx(0.5)
    assert recall_at_k(["c", "a", "b"], rels, 3) == pytest.approx(1.0)
    assert recall_at_k([], rels, 10) == 0.0


def test_recall_duplicates_do_not_push_documents_out() -> None:
    ranking = ["a"] * 10 + ["b"]
    assert recall_at_k(ranking, {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert recall_at_k(ranking, {"a": 1, "b": 1}, 1) == pytest.approx(0.5)


# --- MRR ----------------------------------------------------------------------------------------


def test_mrr_first_relevant_rank() -> None:
    assert mrr_at_k(["x", "y", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["c", "a"], {"a": 1, "c": 0}, 10) == pytest.approx(1 / 2)


def test_mrr_cut_at_k_dedupe_and_empty() -> None:
    assert mrr_at_k([f"x{i}" for i in range(10)] + ["a"], {"a": 1}, 10) == 0.0
    assert mrr_at_k(["x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)
    assert mrr_at_k([], {"a": 1}, 10) == 0.0


# --- evaluate -----------------------------------------------------------------------------------

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 0}}


def test_evaluate_means_and_skips_queries_without_relevant_docs() -> None:
    means, n = evaluate({"q1": ["a"], "q2": ["x", "b"], "q3": ["d"]}, QRELS)
    assert n == 2  # q3 has only a score-0 judgment
    q2_ndcg = (1 / L3) / (1 + 1 / L3)
    assert means["ndcg@10"] == pytest.approx((1 + q2_ndcg) / 2)
    assert means["recall@10"] == pytest.approx(0.75)
    assert means["recall@100"] == pytest.approx(0.75)
    assert means["mrr@10"] == pytest.approx(0.75)


def test_evaluate_missing_run_scores_zero_and_empty_qrels() -> None:
    means, n = evaluate({"q1": ["a"]}, QRELS)
    assert n == 2 and means["ndcg@10"] == pytest.approx(0.5) and means["mrr@10"] == pytest.approx(0.5)
    means, n = evaluate({}, {})
    assert n == 0 and all(v == 0.0 for v in means.values())


# --- percentile ---------------------------------------------------------------------------------


def test_percentile_linear_interpolation() -> None:
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


# --- harness helpers (pure parts of bench.eval_beir) --------------------------------------------


def test_parse_qrels_skips_header_and_blank_lines() -> None:
    lines = ["query-id\tcorpus-id\tscore\n", "1\t10\t1\n", "\n", "1\t11\t0\n", "2\t10\t2\r\n"]
    assert parse_qrels(lines) == {"1": {"10": 1, "11": 0}, "2": {"10": 2}}
    with pytest.raises(ValueError):
        parse_qrels(["1\t10\t1", "1\t11\tbad"])


def test_to_document_and_batches_by_count_and_bytes() -> None:
    doc = to_document({"_id": 42, "text": "t", "title": None})
    assert doc == {"id": "42", "text": "t", "title": "", "metadata": {}}
    docs = [to_document({"_id": i, "text": "x" * 100}) for i in range(5)]
    assert [len(b) for b in batches(docs, 2, 10**6)] == [2, 2, 1]
    assert [len(b) for b in batches(docs, 100, 400)] == [2, 2, 1]  # each doc is ~160 bytes of JSON
    assert list(batches([], 2, 100)) == []


def test_select_queries_keeps_file_order_and_limit() -> None:
    queries = {"3": "c", "1": "a", "2": "b"}
    qrels = {"1": {"d": 1}, "3": {"d": 1}, "9": {"d": 1}}
    assert select_queries(queries, qrels, None) == [("3", "c"), ("1", "a")]
    assert select_queries(queries, qrels, 1) == [("3", "c")]


def test_summarize_counts_failures_as_empty_rankings() -> None:
    outcomes = [AskOutcome("q1", ["a"], 100.0), AskOutcome("q2", error="boom")]
    report = summarize(outcomes, QRELS)
    assert report["queries_evaluated"] == 2 and report["failed_asks"] == 1
    assert report["metrics_pct"]["ndcg@10"] == pytest.approx(50.0)
    assert report["latency_ms"] == {"p50": 100.0, "p95": 100.0}
    assert report["failure_examples"] == ["q2: boom"]


def test_format_table_and_rerank_flag() -> None:
    report = summarize([AskOutcome("q2", error="boom")], QRELS)
    report.update(wall_time_s=1.0, ingest_wall_time_s=None)
    table = eval_beir.format_table(report)
    assert "nDCG@10" in table and "0.00 %" in table and "n/a" in table and "skipped" in table
    assert eval_beir.parse_args(["d"]).rerank is None
    assert eval_beir.parse_args(["d", "--no-rerank"]).rerank is False
    assert eval_beir.parse_args(["d", "--rerank"]).rerank is True
