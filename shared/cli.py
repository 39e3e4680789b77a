"""`dss-ops`: the local-stack commands (up, down, restart, status, token) from anywhere in the venv.

The commands live in deploy/local.py, next to the Makefile that also runs them; this entry point
loads that script from the checkout the package is installed from (an editable install).
"""
from __future__ import annotations

import importlib.util
import logging
import pathlib
import sys

logger = logging.getLogger(__name__)

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "local.py"


def main(argv: list[str] | None = None) -> int:
    if not SCRIPT.exists():
        print(f"dss-ops: {SCRIPT} not found; dss-ops needs an editable install of a checkout "
              "(make install)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("dss_local", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
