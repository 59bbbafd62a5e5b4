"""``python -m kdlab`` (and ``torchrun -m kdlab``) run the command line."""

from kdlab.cli import main

main()
