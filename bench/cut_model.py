"""A stand-in for a faster CPU: the embedding model cut to its first N transformer layers, saved to a folder.

Ingestion's share of the bare model's speed depends on how fast the model runs next to the fixed CPU the
service spends around it (chunking, rows, the milvus-lite server). A CPU that runs the model faster (the AMX
Xeon, 2.7x this EPYC) can be emulated on a slower one by a shallower model with everything else the same:
tokenizer, dtype, batching, chunks. Not a model to search with. Then, for example:

    python -m bench.cut_model 2 /tmp/minilm2
    EMBEDDING_MODEL=/tmp/minilm2 python -m bench.device ../shared/data/scifact-train --configs device,split
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cut(source: str, layers: int, out: Path) -> Path:
    """Save the model at `source` (a name `resolve_model_path` knows, or a folder) with only its first
    `layers` transformer layers to `out`."""
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - heavy: only this tool loads it

    from workers.embedder import resolve_model_path  # noqa: PLC0415 - heavy: only this tool loads it

    model = SentenceTransformer(resolve_model_path(source), device="cpu")
    encoder: Any = model[0].auto_model  # a transformers BertModel (typed as a torch Module here)
    if not 1 <= layers <= encoder.config.num_hidden_layers:
        raise ValueError(f"the model has {encoder.config.num_hidden_layers} layers; asked for {layers}")
    encoder.encoder.layer = encoder.encoder.layer[:layers]
    encoder.config.num_hidden_layers = layers
    model.save(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    from common.settings import get_settings  # noqa: PLC0415 - the settings only when run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", type=int, help="transformer layers to keep, from the first")
    parser.add_argument("out", type=Path, help="folder to save the cut model to")
    parser.add_argument("--model", help="the model to cut (default: EMBEDDING_MODEL's)")
    args = parser.parse_args(argv)
    print(cut(args.model or get_settings().embedding_model, args.layers, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
