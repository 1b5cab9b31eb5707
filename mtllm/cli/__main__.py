"""`python -m mtllm.cli ...` (as used with `torchrun -m` / `accelerate launch -m`) is the `mtllm` command."""
from mtllm.cli import main

raise SystemExit(main())
