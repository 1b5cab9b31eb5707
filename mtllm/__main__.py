"""`python -m mtllm ...` is the `mtllm` command."""
from mtllm.cli import main

raise SystemExit(main())
