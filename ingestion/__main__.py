"""`python -m ingestion PATH...`: the former name of the bulk loader, now `python -m client ingest`.

The loader is client/bulk.py: it talks HTTP only, so it lives with the client. Kept so existing scripts
keep working: it warns once and runs the same loader in its place (a new process, so that server-side
`ingestion` never imports the client).
"""

import os
import sys

print("python -m ingestion is deprecated: use python -m client ingest (same options)", file=sys.stderr)
os.execv(sys.executable, [sys.executable, "-m", "client", "ingest", *sys.argv[1:]])
