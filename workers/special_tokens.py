"""What a tokenizer puts around one text (BERT's `[CLS] … [SEP]`), learnt from the tokenizer itself.

The embedder wraps ids that chunking already made (`Chunk.token_ids`) the way the tokenizer would have, so
that a chunk of whole words is embedded from exactly the ids its text tokenises to, without tokenising it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PROBE = "a"  # one word: its ids alone and with the special tokens tell the two apart
Inputs = tuple[list[list[int]], list[list[int]] | None]  # ids and type ids (None: the model takes none)
Encode = Callable[[list[str]], Inputs]


def continuing_ids(backend: Any) -> frozenset[int]:
    """The ids of a WordPiece vocabulary's tokens that continue a word (`##…`): every other token begins one.
    A set of ids, because reading each token's string back from an encoding costs more than the lookup."""
    prefix = str(backend.model.continuing_subword_prefix)
    return frozenset(i for token, i in backend.get_vocab().items() if token.startswith(prefix))


@dataclass(frozen=True)
class Specials:
    """Ids before and after a text's own, and the type ids of the three parts (None: the model takes none)."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    type_ids: tuple[tuple[int, ...], int, tuple[int, ...]] | None

    @property
    def added(self) -> int:
        return len(self.head) + len(self.tail)

    def ids(self, body: Sequence[int]) -> list[int]:
        return [*self.head, *body, *self.tail]

    def types(self, length: int) -> list[int]:
        if self.type_ids is None:
            return []
        head, body, tail = self.type_ids
        return [*head, *[body] * length, *tail]

    @classmethod
    def of(cls, tokenizer: Any, backend: Any) -> Specials | None:
        """From a transformers tokenizer and its `tokenizers` backend (without specials); None when the
        text's own ids are not one run among the wrapped ones, a tokenizer the embedder always asks."""
        wrapped = tokenizer(PROBE, return_attention_mask=False)
        ids, body = list(wrapped["input_ids"]), list(backend.encode(PROBE, add_special_tokens=False).ids)
        starts = range(len(ids) - len(body) + 1)
        at = next((i for i in starts if body and ids[i : i + len(body)] == body), None)
        if at is None:
            return None
        end = at + len(body)
        kinds = wrapped.get("token_type_ids")
        if kinds is None:
            return cls(tuple(ids[:at]), tuple(ids[end:]), None)
        if len(set(kinds[at:end])) != 1:
            return None
        return cls(tuple(ids[:at]), tuple(ids[end:]), (tuple(kinds[:at]), int(kinds[at]), tuple(kinds[end:])))

    def inputs(
        self, texts: list[str], given: Sequence[Sequence[int] | None], encode: Encode, max_tokens: int
    ) -> Inputs:
        """Each text's model input: its given ids (`Chunk.token_ids`) within the special tokens, or else
        (none given, or too long to be whole) the text tokenised by `encode`, in one call for all of those."""
        whole = [ids is not None and len(ids) + self.added <= max_tokens for ids in given]
        rest_texts = [text for text, ok in zip(texts, whole, strict=True) if not ok]
        encoded, kinds = encode(rest_texts) if rest_texts else ([], None)  # a tokenizer refuses an empty list
        rest, rest_kinds = iter(encoded), iter(kinds or [])
        ids: list[list[int]] = []
        types: list[list[int]] = []
        for row, ok in zip(given, whole, strict=True):
            if ok and row is not None:
                ids.append(self.ids(row))
                types.append(self.types(len(row)))
            else:
                ids.append(next(rest))
                types.append(next(rest_kinds, []))
        return ids, types if self.type_ids is not None else None
