"""`python -m mtllm ...` is the `mtllm` command."""
from .cli import main

raise SystemExit(main())
