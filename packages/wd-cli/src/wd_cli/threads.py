"""The wd command's CPU thread policy, set before torch is imported (OpenMP reads it when it loads).

Two torch processes on one machine (training in one terminal, generating in another) share its cores. OpenMP's
default (GNU libgomp, which torch's wheels bundle) makes a thread that waits for work spin 300,000 times before it
sleeps, so the spinning threads of one process take the cores the other needs: on 2 cores a training loop beside
another fell from 7.2 to 0.4 steps/s. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixes that but costs a third of
the speed of a process alone, whose small operations then each wait for threads to wake. A short spin keeps most
of both (docs/benchmarks.md, "Sharing the machine").
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Spins before a waiting OpenMP thread sleeps. On the 2-core machine (quickstart-sized STPT training steps/s, alone
# and beside a second training process): default 7.2 / 0.4, 10,000 6.9 / 2.6, 3,000 6.0 / 3.5, 1,000 5.3 / 3.8,
# passive 5.0 / 4.1.
SPIN_COUNT = 3000


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Let waiting OpenMP threads spin only briefly (GOMP_SPINCOUNT=SPIN_COUNT) unless the user chose a wait
    policy or a spin count; call it before torch is imported."""
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
