"""A node template: the peer.toml tables every node of a plan inherits (`topology plan
--template peer.toml`, and `fleet admit` for a gateway that joins later).

Why: a fleet's nodes differ only in their key, neighbours, address, data shard and ports;
everything else (model, learner, data source, training, privacy, metrics, round pacing) is the
fleet's choice, written once. A template is an ordinary peer.toml (e.g. one `gossipfl peer
init` wrote and the user edited): its per-node tables (name, identity, network, storage) and
per-node transport keys are the plan's to write and are dropped with a note. Per node:

- strings of `[data]` (`path` and the values of `options`) may name `{name}` (the node's plan
  name) and `{index}` (its position in the plan, also its data shard): `data/{name}.csv`;
- `[metrics] listen = "HOST:PORT"` is the first node's endpoint, node i serves on PORT + i.

The user's own modules the template names (`model.name`, `train.learner`, `data.source` as
`module:attr`) that lie beside the template are copied into every node folder (a peer imports
them from its config's folder first); so are data files a `[data]` path names, when they exist
beside the template. Anything else must already be on the gateways, and the plan says so.
"""

from __future__ import annotations

import shutil
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gossip.files import FileReadError, read_limited_text

from ..config.settings import split_host_port
from ..config.tomlwrite import dumps
from ..errors import ConfigError

PER_NODE = ("name", "identity", "network", "storage")  # what the plan writes for each node itself
PLACEHOLDERS = ("name", "index")
IMPORTED = (("model", "name"), ("train", "learner"), ("data", "source"))  # fields that may name module:attr
TEMPLATE_DIR = "template"  # in a plan folder: the effective template and the modules it names
TEMPLATE_FILE = "template.toml"
MAX_TEMPLATE_FILE = 1024 * 1024


@dataclass
class NodeTemplate:
    """Tables every node inherits (data patterns and the metrics base port unexpanded) and the
    folder its modules and relative data files are found in."""

    tables: dict[str, dict] = field(default_factory=dict)
    folder: Path | None = None
    source: Path | None = None
    dropped: list[str] = field(default_factory=list)  # per-node things the file had: the plan writes its own
    data_folder: Path | None = None  # where relative data paths are found, if not `folder`

    @classmethod
    def load(cls, path: str | Path) -> NodeTemplate:
        path = Path(path)
        try:
            doc = tomllib.loads(read_limited_text(path, MAX_TEMPLATE_FILE, "template"))
        except FileReadError as exc:
            raise ConfigError(str(exc)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        tables, dropped = {}, []
        for key, value in doc.items():
            if key in PER_NODE:
                dropped.append(f"[{key}]" if isinstance(value, dict) else key)
            elif not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} = ... at the top level is not something nodes inherit; "
                                  "a template holds tables ([model], [data], [train], ...)")
            else:
                tables[key] = dict(value)
        template = cls(tables, path.resolve().parent, path.resolve(), dropped)
        template.check()
        return template

    def with_overrides(self, overrides: dict | None) -> NodeTemplate:
        """A copy with `overrides` merged key by key into its tables (a non-table value replaces)."""
        tables = {k: dict(v) for k, v in self.tables.items()}
        for table, values in (overrides or {}).items():
            if isinstance(values, dict):
                tables.setdefault(table, {}).update(values)
            else:
                tables[table] = values
        merged = NodeTemplate(tables, self.folder, self.source, list(self.dropped), self.data_folder)
        merged.check()
        return merged

    def check(self) -> None:
        """Placeholders and the metrics endpoint are well formed (before anything is written)."""
        for where, text in self._patterns():
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as exc:
                raise ConfigError(f"template {where}: {exc} (write a literal brace as {{{{ or }}}})") from None
            unknown = sorted(names - set(PLACEHOLDERS))
            if unknown:
                raise ConfigError(f"template {where}: unknown placeholder {{{unknown[0]}}}; a node's data may name "
                                  f"{{name}} (its plan name) and {{index}} (its position, also its data shard)")
        listen = self.tables.get("metrics", {}).get("listen")
        if listen is not None:
            try:
                split_host_port(listen) if isinstance(listen, str) else split_host_port("")
            except ValueError as exc:
                raise ConfigError(f"template metrics.listen {exc}, got {listen!r:.80}") from None

    def _patterns(self):
        data = self.tables.get("data", {})
        if isinstance(data.get("path"), str):
            yield "data.path", data["path"]
        for k, v in (data.get("options") or {}).items():
            if isinstance(v, str):
                yield f"data.options.{k}", v

    # --- one node -------------------------------------------------------------------------

    def metrics_port(self, index: int) -> int | None:
        listen = self.tables.get("metrics", {}).get("listen")
        return None if listen is None else split_host_port(listen)[1] + index

    def metrics_listen(self, port: int) -> str:
        host, _ = split_host_port(self.tables["metrics"]["listen"])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def for_node(self, name: str, index: int, shards: int, metrics_port: int | None = None) -> dict[str, dict]:
        """The tables of one node: data patterns filled in, its shard, its metrics port
        (`metrics_port`, default the base port + index)."""
        tables = {k: dict(v) if isinstance(v, dict) else v for k, v in self.tables.items()}
        data = tables.setdefault("data", {})
        values = {"name": name, "index": index}
        if isinstance(data.get("path"), str):
            data["path"] = data["path"].format(**values)
        if data.get("options"):
            data["options"] = {k: v.format(**values) if isinstance(v, str) else v for k, v in data["options"].items()}
        data.update({"shard": index, "shards": shards})
        if "metrics" in tables and tables["metrics"].get("listen") is not None:
            port = self.metrics_port(index) if metrics_port is None else metrics_port
            assert port is not None  # metrics.listen is set, so metrics_port found its port
            tables["metrics"] = {**tables["metrics"], "listen": self.metrics_listen(port)}
        return tables

    # --- the user's files -----------------------------------------------------------------

    def imported_modules(self) -> list[str]:
        """Top-level modules the template imports (`pkg.mod:attr` -> pkg), in field order."""
        tops = []
        for table, key in IMPORTED:
            value = self.tables.get(table, {}).get(key)
            if isinstance(value, str) and ":" in value:
                top = value.partition(":")[0].split(".")[0]
                if top and top not in tops:
                    tops.append(top)
        return tops

    def check_imports(self) -> None:
        """Every `module:attr` the template names imports (from beside it first), before a plan
        writes anything; the message names the field and says where it looked."""
        from ..learning.model import load_object

        for table, key in IMPORTED:
            value = self.tables.get(table, {}).get(key)
            if isinstance(value, str) and ":" in value:
                load_object(value, f"{table}.{key}", self.folder)

    def module_files(self) -> tuple[list[Path], list[str]]:
        """(files or package folders beside the template to copy, modules not there: installed?)."""
        found, elsewhere = [], []
        for top in self.imported_modules():
            candidates = [] if self.folder is None else [self.folder / f"{top}.py", self.folder / top]
            hit = next((p for p in candidates if p.is_file() or (p.is_dir() and (p / "__init__.py").is_file())), None)
            (found.append(hit) if hit else elsewhere.append(top))
        return found, elsewhere

    def data_file(self, node_tables: dict) -> tuple[str, Path | None]:
        """A node's data path and the file beside the template to copy there (None: not beside it)."""
        path = node_tables.get("data", {}).get("path")
        folder = self.data_folder or self.folder
        if not isinstance(path, str) or Path(path).is_absolute() or folder is None:
            return path, None
        source = folder / path
        return path, source if source.is_file() else None

    def copy_into(self, node_dir: Path, node_tables: dict) -> list[str]:
        """Copy the modules and the node's data file into its folder; what was copied."""
        copied = []
        modules, _ = self.module_files()
        for src in modules:
            copy_path(src, node_dir / src.name)
            copied.append(src.name)
        path, source = self.data_file(node_tables)
        if source is not None:
            target = node_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied.append(path)
        return copied

    # --- kept in the plan folder, for `fleet admit` -------------------------------------------

    def save(self, plan_dir: Path) -> Path:
        """PLAN/template/template.toml (these tables) and copies of the modules beside it."""
        folder = plan_dir / TEMPLATE_DIR
        folder.mkdir(exist_ok=True)
        for src in self.module_files()[0]:
            copy_path(src, folder / src.name)
        path = folder / TEMPLATE_FILE
        origin = f" (from {self.source})" if self.source else ""
        path.write_text(f"# The tables every node of this plan inherits{origin}; `gossipfl fleet admit` applies\n"
                        "# them to a new gateway. {name} and {index} in [data] are filled in per node; the\n"
                        "# [metrics] port is node 0's (node i: port + i).\n" + dumps(self.tables))
        return path

    @classmethod
    def of_plan(cls, plan_dir: Path, data_from: str | None = None) -> NodeTemplate | None:
        """The template a plan kept (None for a plan written before plans kept one); data files
        are looked up where the original template was (`data_from`), modules in the copy."""
        path = plan_dir / TEMPLATE_DIR / TEMPLATE_FILE
        if not path.is_file():
            return None
        template = cls.load(path)
        template.data_folder = Path(data_from) if data_from else None
        template.source = None
        return template


def copy_path(src: Path, dst: Path) -> None:
    """A module file, or a package folder without its caches."""
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(src, dst)
