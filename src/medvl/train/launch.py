"""Re-launching ``medvl`` under torchrun, kept free of torch imports so ``medvl train --nproc N``
spawns its workers without first paying for a torch import in the parent process."""

from __future__ import annotations

import os
import subprocess
import sys


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun (it sets RANK and WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The command that runs ``medvl <args>`` under torchrun with ``nproc`` local processes.

    ``python -m torch.distributed.run`` is torchrun from the same interpreter/venv as this one;
    ``--standalone`` picks a free rendezvous port on this machine.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "medvl.cli", *args]


def spawn_torchrun(nproc: int, args: list[str]) -> int:
    """Run torchrun as a child process and return its exit code."""
    return subprocess.call(torchrun_command(nproc, args))
