"""``python -m worker`` is ``dunning``."""

from worker.cli import main

main()
