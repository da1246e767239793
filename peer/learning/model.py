"""Models as flat parameters: every parameter is a view into one contiguous float32 vector,
so reading the model for sending and writing the aggregate back are single copies.

The schema (ordered names, shapes, dtypes) is hashed; peers only accept updates whose
schema hash equals theirs.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack

from gossip.lazy import lazy

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch, nn = lazy("torch"), lazy("torch.nn")  # loaded when a model is built, not to read a config


def mlp(in_features: int = 64, hidden: list[int] | tuple[int, ...] = (32,), classes: int = 10) -> nn.Module:
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(nn.Flatten(), *layers)


def cnn(in_features: int = 64, channels: int = 16, classes: int = 10, side: int = 8) -> nn.Module:
    """A small CNN for side x side single-channel images (8x8 digits by default)."""
    if side * side != in_features:
        raise ConfigError(f"model.cnn needs square images: side^2 = {side * side} != in_features {in_features}")
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * (side // 2) ** 2, 64), nn.ReLU(), nn.Linear(64, classes))


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}
MAX_WIDTH = 1 << 16  # a hidden layer, channel count or image side of a built-in model
MAX_LAYERS = 64
MAX_PARAMETERS = 50_000_000  # 200 MB of float32: beyond it, name your own factory


def _whole(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_WIDTH


def _check_hidden(v) -> str | None:
    if not isinstance(v, list | tuple) or len(v) > MAX_LAYERS or not all(_whole(h, 1) for h in v):
        return (f"must be a list of at most {MAX_LAYERS} layer widths, each a whole number in 1..{MAX_WIDTH} "
                "([] for a linear model)")
    return None


def _check_size(low: int):
    def check(v) -> str | None:
        return None if _whole(v, low) else f"must be a whole number in {low}..{MAX_WIDTH}"
    return check


BUILTIN_OPTIONS = {"mlp": {"hidden": _check_hidden}, "cnn": {"channels": _check_size(1), "side": _check_size(2)}}


def check_builtin_options(name: str, options: dict) -> None:
    """Each option of a built-in model is known and in range; errors name model.options.KEY."""
    allowed = BUILTIN_OPTIONS[name]
    for key, v in options.items():
        if key not in allowed:
            raise ConfigError(f"model.options.{key}: the {name} model has no such option; "
                              f"allowed: {', '.join(allowed)}")
        problem = allowed[key](v)
        if problem:
            raise ConfigError(f"model.options.{key} {problem}, got {v!r}")


def builtin_parameter_count(name: str, in_features: int, classes: int, options: dict) -> int:
    """Parameters a built-in model would have, computed before anything is allocated."""
    defaults = {k: p.default for k, p in inspect.signature(BUILTIN[name]).parameters.items()}
    o = {**defaults, **options}
    if name == "mlp":
        widths = [in_features, *o["hidden"], classes]
        return sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
    c, half = o["channels"], o["side"] // 2
    return 10 * c + (9 * c + 1) * 2 * c + (2 * c * half * half + 1) * 64 + 65 * classes


def check_call(fn, what: str, options: dict, fixed: tuple[str, ...] = ()) -> None:
    """`fn(**fixed, **options)` binds to fn's signature (anything goes if it takes **kwargs);
    `what` names the table the options come from, e.g. "model.options"."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: let the call itself report
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"{what}.{clash[0]}: set by gossipfl itself, not an option")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    try:
        sig.bind(**dict.fromkeys(fixed), **options)
    except TypeError as exc:
        takes = [p for p in sig.parameters if p not in fixed]
        raise ConfigError(f"{what}: {getattr(fn, '__name__', fn)} {exc} (it takes: {', '.join(takes) or 'nothing'})") from None


def accepted_arguments(fn, offered: dict) -> dict:
    """The part of `offered` that fn declares by name (all of it if fn takes **kwargs): a
    factory names only what it needs (an autoencoder has no use for `classes`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(offered)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return dict(offered)
    named = {k for k, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in named}


def _local_origin(module: str, base: Path) -> Path | None:
    """The file `module` would be imported from inside `base`, None if it is not there."""
    parts = module.split(".")
    for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _same_file_bytes(a: Path, b: Path) -> bool:
    """Two copies of one module (e.g. every gateway folder of a plan run in one process)."""
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _import(module: str, what: str, base: Path | None):
    """Import `module`, from the folder `base` (the config's) first, then the installed packages."""
    local = _local_origin(module, base) if base is not None else None
    if local is not None:
        assert base is not None  # local is only looked for inside base
        top = module.split(".")[0]
        loaded = sys.modules.get(top)
        origin = getattr(loaded, "__file__", None) if loaded is not None else None
        if origin is not None and not Path(origin).resolve().is_relative_to(base.resolve()) \
                and not _same_file_bytes(Path(origin), local):
            raise ConfigError(f"{what}: module {top!r} is already imported from {origin}, not from {base}; "
                              f"rename {local.name} (every module a process imports needs its own name)")
    added = local is not None and str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if module == missing or module.startswith(missing + "."):
            where = f"{base} (the config's folder) or " if base is not None else ""
            file = module.replace(".", "/") + ".py"
            raise ConfigError(f"{what}: no module {module!r} in {where}the installed packages; put {file} "
                              f"beside the config{'' if base is None else f' ({base / file})'}, or pip install "
                              "the package that provides it") from None
        raise ConfigError(f"{what}: {module!r} imports {missing!r}, which is not installed "
                          f"(pip install it)") from None
    except ConfigError:
        raise
    except Exception as exc:  # user code failed while importing: one line, no traceback
        raise ConfigError(f"{what}: importing {module!r} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(base))


def load_object(path: str, what: str, base: str | os.PathLike | None = None):
    """'package.module:name' -> the object, the module looked up in the folder `base` (the
    config's) before the installed packages; errors say what was wrong and how to fix it."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"{what}: expected 'package.module:name', got {path!r}")
    mod = _import(module, what, None if base is None else Path(base))
    obj = getattr(mod, name, None)
    if obj is None:
        raise ConfigError(f"{what}: {module!r} ({getattr(mod, '__file__', '?')}) has no {name!r}")
    if not callable(obj):
        raise ConfigError(f"{what}: {path} is a {type(obj).__name__}, not a function")
    return obj


MODEL_ARGUMENTS = ("in_features", "input_shape", "classes")  # what gossipfl offers every model factory


def check_model_factory(name: str, options: dict, base: str | os.PathLike | None = None):
    """The user factory model.name names, after checking it takes model.options."""
    factory = load_object(name, "model.name", base)
    clash = sorted(set(options) & set(MODEL_ARGUMENTS))
    if clash:
        raise ConfigError(f"model.options.{clash[0]}: set by gossipfl itself, not an option")
    given = accepted_arguments(factory, dict.fromkeys(MODEL_ARGUMENTS))
    check_call(factory, "model.options", options, fixed=tuple(given))
    return factory


def build_model(name: str, in_features: int, classes: int, options: dict | None = None, seed: int = 0,
                base: str | os.PathLike | None = None) -> nn.Module:
    """A built-in model by name or a user factory by import path, seeded for reproducibility.

    A user factory receives, by keyword, whichever of `in_features` (values per sample),
    `input_shape` (the shape of one sample as the model sees it: `(in_features,)`) and
    `classes` (model.classes) it declares, plus its model.options."""
    options = dict(options or {})
    torch.manual_seed(seed)
    if name in BUILTIN:
        check_builtin_options(name, options)
        count = builtin_parameter_count(name, in_features, classes, options)
        if count > MAX_PARAMETERS:
            raise ConfigError(f"model.options: this {name} would have {count:,} parameters, at most "
                              f"{MAX_PARAMETERS:,} for a built-in model (name your own factory for more)")
        return BUILTIN[name](in_features=in_features, classes=classes, **options)
    factory = check_model_factory(name, options, base)
    given = accepted_arguments(factory, {"in_features": in_features, "input_shape": (in_features,),
                                         "classes": classes})
    try:
        model = factory(**given, **options)
    except ConfigError:
        raise
    except Exception as exc:  # user code: one line naming the factory
        raise ConfigError(f"model.name: {name}({', '.join(given)}) failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class FlatModel:
    """A module whose parameters live in one flat float32 buffer."""

    def __init__(self, module: nn.Module):
        self.module = module
        params = [(n, p) for n, p in module.named_parameters()]
        if not params:
            raise ConfigError("model has no parameters")
        self.names = [n for n, _ in params]
        self.shapes = [tuple(p.shape) for _, p in params]
        total = sum(p.numel() for _, p in params)
        self.flat = torch.empty(total, dtype=torch.float32)
        offset = 0
        for _, p in params:
            k = p.numel()
            self.flat[offset : offset + k].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + k].view(p.shape)
            offset += k
        self.schema = schema_hash(self.names, self.shapes)

    @property
    def size(self) -> int:
        return self.flat.numel()

    def get(self) -> torch.Tensor:
        """A copy of the parameters (safe to send while training goes on)."""
        return self.flat.clone()

    def set(self, values: torch.Tensor) -> None:
        if values.shape != self.flat.shape:
            raise ValueError(f"expected {self.flat.numel()} values, got {values.numel()}")
        with torch.no_grad():
            self.flat.copy_(values)


def schema_hash(names: list[str], shapes: list[tuple[int, ...]]) -> bytes:
    body = msgpack.packb([["float32", n, list(s)] for n, s in zip(names, shapes, strict=True)])
    return hashlib.sha256(b"gossipfl/schema/v1\x00" + body).digest()
