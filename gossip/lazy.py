"""A module imported on first use, so commands that never touch a model start without torch.

`torch = lazy("torch")` at the top of a module behaves like `import torch` except that the
import (about 1 s and 200 MB) happens at the first attribute access; annotations are not
evaluated (`from __future__ import annotations`), so they cost nothing. Unlike importlib's
LazyLoader it never puts a half-loaded module into sys.modules.
"""

from __future__ import annotations

import importlib


class lazy:  # noqa: N801 - used like a module name
    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"
