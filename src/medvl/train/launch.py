"""Re-launching ``medvl`` under torchrun, kept free of torch imports so ``medvl train --nproc N``
spawns its workers without first paying for a torch import in the parent process."""

from __future__ import annotations

import os
import subprocess
import sys


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun (it sets RANK and WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_command(nproc: int, args: list[str], nnodes: int = 1, rdzv_endpoint: str | None = None,
                     rdzv_id: str = "medvl") -> list[str]:
    """The command that runs ``medvl <args>`` under torchrun with ``nproc`` processes on this node.

    ``python -m torch.distributed.run`` is torchrun from the same interpreter/venv as this one.
    One node without an endpoint: ``--standalone`` (a free local rendezvous port). Several nodes
    (or an explicit endpoint): a c10d rendezvous at ``rdzv_endpoint`` (``HOST:PORT`` of one
    node, reachable from all), where every node runs the same ``medvl train --nproc N --nnodes M
    --rdzv-endpoint HOST:PORT`` and torchrun assigns the ranks.
    """
    from medvl.errors import ConfigError

    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc and --nnodes must be >= 1, got {nproc} and {nnodes}")
    head = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise ConfigError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (a port on one of the nodes "
                              f"that every node can reach)")
        head.append("--standalone")
    else:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--rdzv-endpoint must be HOST:PORT, got {rdzv_endpoint!r}")
        head += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                 f"--rdzv-id={rdzv_id}"]
    return [*head, "-m", "medvl.cli", *args]


def spawn_torchrun(nproc: int, args: list[str], nnodes: int = 1, rdzv_endpoint: str | None = None,
                   rdzv_id: str = "medvl") -> int:
    """Run torchrun as a child process and return its exit code."""
    return subprocess.call(torchrun_command(nproc, args, nnodes, rdzv_endpoint, rdzv_id))
