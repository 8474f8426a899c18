"""`python -m seglab` (and `torchrun -m seglab train ...`) runs the command line."""

from seglab.cli import main

raise SystemExit(main())
