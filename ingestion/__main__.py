"""`python -m ingestion PATH...`: the former name of the bulk loader, now `python -m client ingest`.

The loader is client/bulk.py: it talks HTTP only, so it lives with the client. Kept so existing scripts
keep working; it warns once and runs the same loader.
"""

import sys

from client.bulk import main

print("python -m ingestion is deprecated: use python -m client ingest (same options)", file=sys.stderr)
raise SystemExit(main())
