"""A small TOML writer for the configs this project generates (tomllib only reads)."""

from __future__ import annotations

import json


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON-compatible for these characters
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    if v is None:
        raise ValueError("TOML has no null")
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(doc: dict, comments: dict[str, str] | None = None) -> str:
    """Top-level scalars first, then one [table] per dict; None values are left out.
    `comments`: "table" -> a comment line above [table], "table.key" -> one after the value."""
    comments = comments or {}
    lines = []
    for k, v in doc.items():
        if not isinstance(v, dict) and v is not None:
            lines.append(f"{k} = {value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append("")
            if k in comments:
                lines.append(f"# {comments[k]}")
            lines.append(f"[{k}]")
            for kk, vv in v.items():
                if vv is None:
                    continue
                if isinstance(vv, list) and vv and all(isinstance(x, dict) for x in vv):
                    lines.append(f"{kk} = [")
                    lines += [f"    {value(x)}," for x in vv]
                    lines.append("]")
                else:
                    line = f"{kk} = {value(vv)}"
                    note = comments.get(f"{k}.{kk}")
                    lines.append(f"{line:<24} # {note}" if note else line)
    return "\n".join(lines) + "\n"
