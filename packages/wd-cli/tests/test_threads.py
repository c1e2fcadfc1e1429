"""The wd command's OpenMP wait policy: a short spin unless the user chose one, set before torch loads."""

import os
import subprocess
import sys

from wd_cli.threads import SPIN_COUNT, configure_threads


def test_sets_a_short_spin_when_the_user_chose_nothing():
    environ: dict[str, str] = {}
    configure_threads(environ)
    assert environ == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def test_keeps_the_users_wait_policy_or_spin_count():
    for chosen in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "0"}):
        environ = dict(chosen)
        configure_threads(environ)
        assert environ == chosen


def test_the_wd_command_sets_it_before_torch_is_imported():
    environ = {name: value for name, value in os.environ.items()
               if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, sys; import wd_cli.main; "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(SPIN_COUNT), "False"]
