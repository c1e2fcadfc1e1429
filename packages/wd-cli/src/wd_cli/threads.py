"""The wd command's CPU thread policy, set before torch is imported (OpenMP reads it when it loads).

Two torch processes on one machine (training in one terminal, generating in another) share its cores. OpenMP's
default makes a thread that waits for work spin for a while before it sleeps, so the spinning threads of one
process take the cores the other needs: on 2 cores one process slowed ninefold, far past the 2x of a fair share
(docs/benchmarks.md, "Sharing the machine"). Waiting threads that sleep at once give the cores back.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make waiting OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user set a policy; call it before
    torch is imported."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
