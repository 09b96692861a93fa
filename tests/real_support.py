"""What the tests marked ``real`` share: they need the `real` extra (``make real``). Without it they skip,
except under CI=true, where a missing extra is a failure (``.ci/run`` installs it)."""

from __future__ import annotations

import os

import pytest

from theseus_ops.demo.real import sources

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
MISSING = sources.missing()

REAL_MARKS = [
    pytest.mark.real,
    pytest.mark.skipif(bool(MISSING) and not IN_CI,
                       reason=f"needs the `real` extra (missing {', '.join(MISSING)}): make real"),
]


def real_test(test):
    """REAL_MARKS on one test, in a module whose other tests need no extra."""
    for mark in REAL_MARKS:
        test = mark(test)
    return test
