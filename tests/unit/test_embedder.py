"""Embedder on the bundled all-MiniLM-L6-v2 (CPU, fp32): batching, ordering, padding, OOM, BGE loading."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from common.settings import OFFLINE_EMBEDDING_MODEL, Settings
from workers.embedder import (
    BGE_EN_INSTRUCTION,
    BGE_ZH_INSTRUCTION,
    SentenceTransformerEmbedder,
    build_model,
    load_embedder,
    plan_passes,
    query_instruction,
    resolve_model_path,
    run_halving,
)

SHORT = "Cats eat fish."
MEDIUM = "The mitochondria is the powerhouse of the cell, producing most of its chemical energy."
LONG = " ".join(["Long documents about protein folding and molecular dynamics simulations."] * 30)
MIXED = [SHORT, LONG, MEDIUM, "x", LONG[:300], SHORT + " " + MEDIUM]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    """fp32 on CPU with a tiny budget so MIXED spans several batches of different widths."""
    return load_embedder(Settings(device="cpu", cpu_bf16=False, embed_token_budget=300, embed_max_batch=2))


@pytest.mark.parametrize(
    ("name", "explicit", "prompts", "expected"),
    [
        ("BAAI/bge-small-en-v1.5", None, None, BGE_EN_INSTRUCTION),
        ("BAAI/bge-base-en", None, {}, BGE_EN_INSTRUCTION),
        ("/models/bge-large-en-v1.5/", None, None, BGE_EN_INSTRUCTION),
        ("BAAI/bge-large-zh-v1.5", None, None, BGE_ZH_INSTRUCTION),
        ("BAAI/bge-small-zh", None, None, BGE_ZH_INSTRUCTION),
        ("BAAI/bge-m3", None, None, ""),
        ("BAAI/bge-large-zh-noinstruct", None, None, ""),
        ("sentence-transformers/all-MiniLM-L6-v2", None, None, ""),
        (OFFLINE_EMBEDDING_MODEL, None, {"query": "", "document": ""}, ""),
        ("BAAI/bge-small-en-v1.5", "", None, ""),  # explicit empty string disables
        ("BAAI/bge-small-en-v1.5", "query: ", None, "query: "),
        ("BAAI/bge-small-en-v1.5", None, {"query": "model's own: "}, "model's own: "),
        ("intfloat/e5-small-v2", None, {"query": "query: "}, "query: "),
    ],
)
def test_query_instruction(
    name: str, explicit: str | None, prompts: dict[str, str] | None, expected: str
) -> None:
    assert query_instruction(name, explicit, prompts) == expected


def test_plan_batches_respects_budget_and_max_batch() -> None:
    assert plan_passes([100, 50, 50, 10, 10, 10], token_budget=200, max_batch=3) == [(0, 2), (2, 5), (5, 6)]
    assert plan_passes([500, 1], token_budget=100, max_batch=8) == [(0, 1), (1, 2)]  # oversize goes alone
    assert plan_passes([], token_budget=100, max_batch=8) == []


def test_document_embeddings_are_normalised_float32(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed_documents(MIXED)
    assert vectors.shape == (len(MIXED), embedder.dimension) == (len(MIXED), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.max_tokens == 256
    assert embedder.model_name == OFFLINE_EMBEDDING_MODEL


def test_empty_input_has_shape_zero_by_dim(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder.embed_documents([]).shape == (0, 384)
    assert embedder.embed_queries([]).shape == (0, 384)
    assert embedder.token_vectors([], query=False) == []


def test_mixed_lengths_keep_input_order(embedder: SentenceTransformerEmbedder) -> None:
    mixed = embedder.embed_documents(MIXED)
    alone = np.stack([embedder.embed_documents([text])[0] for text in MIXED])
    assert (mixed * alone).sum(axis=1).min() > 0.999


def test_matches_sentence_transformers_encode(embedder: SentenceTransformerEmbedder) -> None:
    reference = embedder._model.encode(MIXED, normalize_embeddings=True, convert_to_numpy=True)
    assert (embedder.embed_documents(MIXED) * reference).sum(axis=1).min() > 0.999


def test_queries_equal_documents_without_instruction(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder.instruction == ""
    np.testing.assert_allclose(embedder.embed_queries(MIXED), embedder.embed_documents(MIXED), atol=1e-6)


def test_instruction_applies_to_queries_only(embedder: SentenceTransformerEmbedder) -> None:
    instructed = SentenceTransformerEmbedder(embedder._model, "test", embedder._device, BGE_EN_INSTRUCTION)
    np.testing.assert_allclose(
        instructed.embed_documents([MEDIUM]), embedder.embed_documents([MEDIUM]), atol=1e-6
    )
    query, document = instructed.embed_queries([MEDIUM])[0], instructed.embed_documents([MEDIUM])[0]
    assert float(query @ document) < 0.999
    plain = len(instructed.token_vectors([SHORT], query=False)[0])
    assert len(instructed.token_vectors([SHORT], query=True)[0]) > plain


def test_token_vectors_exclude_padding(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.token_vectors(MIXED, query=False)
    tokenizer = embedder._model.tokenizer
    for text, tokens in zip(MIXED, vectors, strict=True):
        expected = len(tokenizer(text, truncation=True, max_length=embedder.max_tokens)["input_ids"])
        assert tokens.shape == (expected, 384)
        assert tokens.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=1e-5)
        alone = embedder.token_vectors([text], query=False)[0]
        np.testing.assert_allclose(tokens, alone, atol=1e-4)
    assert len(vectors[1]) == embedder.max_tokens  # LONG is truncated, not dropped


def test_padded_widths_change_shapes_not_results(embedder: SentenceTransformerEmbedder) -> None:
    """Padding every pass to a multiple of 16 tokens: the model sees only such widths, budgeted by them,
    and the vectors (sentence and token) are those of exact widths, in input order."""
    config = dataclasses.replace(embedder._device, pad_multiple=16)
    padded = SentenceTransformerEmbedder(embedder._model, "padded", config)
    shapes: list[tuple[int, int]] = []
    hook = padded._model.register_forward_pre_hook(
        lambda _module, args: shapes.append(tuple(args[0]["input_ids"].shape))
    )
    try:
        vectors = padded.embed_documents(MIXED)
        tokens = padded.token_vectors(MIXED, query=False)
    finally:
        hook.remove()
    assert shapes and all(width % 16 == 0 or width == padded.max_tokens for _, width in shapes)
    assert all(rows * width <= max(config.token_budget, width) for rows, width in shapes)
    np.testing.assert_allclose(vectors, embedder.embed_documents(MIXED), atol=1e-5)
    for got, exact in zip(tokens, embedder.token_vectors(MIXED, query=False), strict=True):
        assert got.shape == exact.shape
        np.testing.assert_allclose(got, exact, atol=1e-4)


def test_token_spans_cover_the_whole_text_silently(
    embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    text = "Hello, world! " * 200
    with caplog.at_level(logging.WARNING):
        spans = embedder.tokens(text).spans
    assert len(spans) == 800 > embedder.max_tokens  # no truncation, no special tokens
    assert [text[a:b] for a, b in spans[:4]] == ["Hello", ",", "world", "!"]
    assert spans[-1][1] == len(text.rstrip())
    assert not [r for r in caplog.records if "longer than" in r.getMessage()]
    # The main path truncates; spans must stay untruncated afterwards too.
    embedder.embed_documents([text])
    assert len(embedder.tokens(text).spans) == 800


def test_run_halving_splits_on_oom_and_keeps_order() -> None:
    sizes: list[int] = []

    def fn(batch: Sequence[int]) -> list[int]:
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return [x * 10 for x in batch]

    assert run_halving(list(range(7)), fn) == [x * 10 for x in range(7)]
    assert sizes == [7, 3, 1, 2, 4, 2, 2]


def test_run_halving_reraises_at_single_item() -> None:
    def fn(batch: Sequence[int]) -> list[int]:
        raise torch.cuda.OutOfMemoryError("always")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_halving([1, 2, 3], fn)


def test_embedder_survives_injected_oom(
    embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = embedder.embed_documents(MIXED)
    real_forward = embedder._forward
    seen: list[int] = []

    def flaky(ids: list[list[int]], types: list[list[int]] | None, tokens: bool) -> list[np.ndarray]:
        seen.append(len(ids))
        if len(ids) > 1:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return real_forward(ids, types, tokens)

    monkeypatch.setattr(embedder, "_forward", flaky)
    np.testing.assert_allclose(embedder.embed_documents(MIXED), expected, atol=1e-5)
    assert max(seen) > 1 and seen.count(1) == len(MIXED)


@pytest.fixture(scope="module")
def bge_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A BGE-named plain transformers checkpoint (no modules.json), made from the bundled BERT weights."""
    directory = tmp_path_factory.mktemp("models") / "bge-tiny-test"
    bundled = SentenceTransformer(resolve_model_path(OFFLINE_EMBEDDING_MODEL), device="cpu")
    transformer = bundled[0]
    assert isinstance(transformer, Transformer)
    transformer.auto_model.save_pretrained(directory)
    bundled.tokenizer.save_pretrained(directory)
    assert not (directory / "modules.json").exists()
    yield directory


def test_bge_directory_without_st_config_gets_cls_pooling(bge_dir: Path) -> None:
    model = build_model(str(bge_dir), "cpu")
    assert isinstance(model[1], Pooling) and model[1].pooling_mode == "cls"
    assert isinstance(model[2], Normalize)
    embedder = load_embedder(Settings(device="cpu", cpu_bf16=False, embedding_model=str(bge_dir)))
    assert embedder.instruction == ""  # "bge-tiny-test" is no known instructed BGE release
    sentence = embedder.embed_documents([MEDIUM])[0]
    cls_token = embedder.token_vectors([MEDIUM], query=False)[0][0]
    np.testing.assert_allclose(sentence, cls_token, atol=1e-5)


def test_plain_directory_without_st_config_gets_mean_pooling(bge_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain-bert"
    plain.mkdir()
    for item in bge_dir.iterdir():
        (plain / item.name).write_bytes(item.read_bytes())
    model = build_model(str(plain), "cpu")
    assert model[1].pooling_mode == "mean"
