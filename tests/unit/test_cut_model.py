"""bench.cut_model: the bundled model cut to fewer layers still loads as an embedder, with those layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cut_model import cut
from common.settings import Settings
from workers.embedder import load_embedder


def test_a_cut_model_keeps_its_first_layers_and_embeds(tmp_path: Path) -> None:
    out = cut(Settings().embedding_model, 2, tmp_path / "cut")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    embedder = load_embedder(Settings(embedding_model=str(out)))
    vectors = embedder.embed_documents(["a passage to embed", "another"])
    assert vectors.shape == (2, 384)


def test_more_layers_than_the_model_has_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has 6 layers"):
        cut(Settings().embedding_model, 7, tmp_path / "cut")
