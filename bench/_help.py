"""`--help` for bench scripts without argparse: print the usage and the module's docstring, start nothing."""

from __future__ import annotations

import os
import sys


def answer_help(doc: str | None, options: str = "") -> None:
    """Exit 0 after printing usage when -h or --help is among the arguments."""
    if "-h" not in sys.argv[1:] and "--help" not in sys.argv[1:]:
        return
    name = os.path.basename(sys.argv[0])
    print(f"usage: python bench/{name} [-h]{' ' + options if options else ''}\n")
    print((doc or "").strip())
    sys.exit(0)
