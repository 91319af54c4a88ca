"""`python -m ingestion PATH... --collection C --api URL`: the bulk loader (see ingestion/loader.py)."""

from ingestion.loader import main

raise SystemExit(main())
