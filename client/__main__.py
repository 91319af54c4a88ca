"""`python -m client`: the Quarry command line (see client/cli.py)."""

from client.cli import main

raise SystemExit(main())
