"""The package's top level: what importing it costs and pulls in."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_does_not_pull_in_click_or_google() -> None:
    """`import sa_fieldcrypt` imports neither click (the CLI) nor google.* (the gcp extra)."""
    probe = (
        "import json, sys, sa_fieldcrypt; "
        "top = {m.split('.')[0] for m in sys.modules}; "
        "print(json.dumps(sorted(top & {'click', 'google'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert [] == json.loads(out)
