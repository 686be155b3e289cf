"""``python -m medvl.cli`` (used by torchrun to launch distributed training)."""

from medvl.cli import main

main()
