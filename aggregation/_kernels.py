"""Rows read in place, and the compiled loops that read them (aggregation/_kernels.c).

A rule's input is a batch of stacks (B, n, d). The batched simulator's stacks are rows of one
(N, d) tensor of every node's model: gathering them into a (B, n, d) copy costs more than most
rules. `Rows` names the rows instead (entry b's row i is the float32 row at address[b, i], in a
tensor it keeps alive), and the rules that can read rows in place take it: the coordinate-wise
networks, means and mixes (`network`) and the centred Gram matrices of the distance-based rules
(`gram`). A peer's single stack goes through the very same calls, as `Rows.of(stack)`.

The C file is compiled on first use with the system's C compiler into a per-user cache folder
(private to the user, named by a hash of the source and flags). Without a compiler, or with
GOSSIPFL_KERNELS=0, `available()` is False and the rules run the same programs in torch/numpy
on a gathered stack (aggregation/_columns.py); a test checks the two agree.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_name("_kernels.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_lock = threading.Lock()
_state: dict[str, object] = {}


class Rows:
    """A batch of B stacks of n float32 rows of length d, each row read where it lives.

    `source` (N, d) holds the rows named by `index` (B, n); `replace` points chosen (b, i) at
    other rows (a crafted attack row) without touching `source`. `finite` (B, n), when the maker
    knows it, says which rows hold only finite values (aggregate's input check reads it)."""

    def __init__(self, source: torch.Tensor, index: np.ndarray, finite: np.ndarray | None = None):
        if source.dtype != torch.float32 or source.dim() != 2 or not source.is_contiguous():
            raise ValueError("Rows: source must be a contiguous (N, d) float32 tensor")
        self.source, self.index = source, np.ascontiguousarray(index, dtype=np.int64)
        self.d = source.shape[1]
        self.address = source.data_ptr() + self.index * (self.d * 4)
        self.finite = finite
        self._extra: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []

    @staticmethod
    def of(stack: torch.Tensor) -> Rows:
        """The rows of a contiguous float32 (B, n, d) stack, in place."""
        batch, n, d = stack.shape
        return Rows(stack.reshape(batch * n, d), np.arange(batch * n).reshape(batch, n))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.index.shape[0], self.index.shape[1], self.d)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def dim(self) -> int:
        return 3

    def replace(self, b: np.ndarray, i: np.ndarray, rows: torch.Tensor) -> None:
        """Entry b[k]'s row i[k] becomes rows[k] (rows (k, d) float32, kept alive here)."""
        rows = rows.to(torch.float32).contiguous()
        self.address[b, i] = rows.data_ptr() + np.arange(len(b), dtype=np.int64) * (self.d * 4)
        if self.finite is not None:
            self.finite[b, i] = torch.isfinite(rows).all(dim=1).numpy()
        self._extra.append((np.asarray(b), np.asarray(i), rows))

    def pick(self, chosen: torch.Tensor) -> torch.Tensor:
        """(B, k, d): entry b's rows chosen[b] (B, k), copied (needs the kernels)."""
        lib = library()
        assert lib is not None
        addr = np.ascontiguousarray(self.address[np.arange(self.shape[0])[:, None], chosen.numpy()])
        out = torch.empty(*chosen.shape, self.d, dtype=torch.float32)
        lib.gm_pick(addr.ctypes.data, addr.size, self.d, out.data_ptr())
        return out

    def materialize(self) -> torch.Tensor:
        """The (B, n, d) stack, gathered (for rules that do not read rows in place)."""
        batch, n, d = self.shape
        out = self.source.index_select(0, torch.from_numpy(self.index.reshape(-1))).view(batch, n, d)
        for b, i, rows in self._extra:
            out[torch.from_numpy(b), torch.from_numpy(i)] = rows
        return out


Stack = torch.Tensor | Rows  # what a rule that reads rows in place takes


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gossipfl"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = base.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(f"{base} must belong to this user and not be writable by others (chmod 700 {base})")
    return base


def _cpu() -> str:
    """What -march=native compiles for: a cache shared by several machines keeps one build per CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL | None:
    if os.environ.get("GOSSIPFL_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn("no C compiler (cc): aggregation runs its slower torch/numpy path; install gcc for the "
                      "compiled one", RuntimeWarning, stacklevel=3)
        return None
    text = SOURCE.read_bytes()
    key = hashlib.sha256(text + " ".join([cc, *FLAGS, sys.platform, _cpu()]).encode()).hexdigest()[:16]
    try:
        lib = _cache() / f"kernels-{key}.so"
        if not lib.exists():
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                built = Path(tmp) / "k.so"
                subprocess.run([cc, *FLAGS, "-o", str(built), str(SOURCE)], check=True, capture_output=True,
                               timeout=120)
                os.replace(built, lib)
            for old in lib.parent.glob("kernels-*.so"):  # builds of an earlier source or CPU
                if old != lib:
                    old.unlink(missing_ok=True)
        dll = ctypes.CDLL(str(lib))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"aggregation kernels not built ({e}); running the slower torch/numpy path",
                      RuntimeWarning, stacklevel=3)
        return None
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    dll.gm_network.argtypes = [p, i64, i32, i64, p, i32, i32, p, i32, p, i32, p]
    dll.gm_gram.argtypes = [p, i64, i32, i64, i32, i32, p]
    dll.gm_pick.argtypes = [p, i64, i64, p]
    dll.gm_finite_rows.argtypes = [p, i64, i64, p]
    dll.gm_finite_rows.restype = None
    dll.gm_network.restype = dll.gm_gram.restype = ctypes.c_int
    dll.gm_pick.restype = None
    return dll


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _build()
        return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    return library() is not None


def as_rows(stack: torch.Tensor | Rows) -> Rows | None:
    """`stack` as Rows where the kernels can read it (float32, kernels built), else None."""
    if isinstance(stack, Rows):
        return stack
    if stack.dtype != torch.float32 or not available():
        return None
    return Rows.of(stack.contiguous())


def finite_rows(x: torch.Tensor) -> np.ndarray:
    """(N,) bool: which rows of a contiguous (N, d) float32 tensor hold only finite values (one
    pass over it, where `torch.isfinite(x).all(1)` writes a bool per value first)."""
    lib = library()
    if lib is None or x.dtype != torch.float32 or not x.is_contiguous():
        return (torch.isfinite(x.amax(dim=1)) & torch.isfinite(x.amin(dim=1))).numpy()
    out = np.empty(x.shape[0], dtype=np.uint8)
    lib.gm_finite_rows(x.data_ptr(), x.shape[0], x.shape[1], out.ctypes.data)
    return out.view(bool)


def _program(steps: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    return np.ascontiguousarray(np.array(steps, dtype=np.int32).reshape(-1, 4))


def network(rows: Rows, steps: tuple[tuple[int, int, int, int], ...], keep: tuple[int, ...],
            mix: torch.Tensor | None = None, centre: int = -1) -> torch.Tensor:
    """(B, d): per column, the mean of rows `keep` after the comparator program `steps`
    (aggregation._columns.network's) on each entry's rows, or on mix[b] @ rows (mix (B, m, n));
    with `centre`, on rows[centre] + mix[b] @ (rows - rows[centre])."""
    lib = library()
    assert lib is not None
    batch, n, d = rows.shape
    out = torch.empty(batch, d, dtype=torch.float32)
    prog, kept = _program(steps), np.ascontiguousarray(keep, dtype=np.int32)
    m = 0 if mix is None else mix.shape[1]
    mixed = None if mix is None else mix.to(torch.float32).contiguous()
    err = lib.gm_network(rows.address.ctypes.data, batch, n, d, None if mixed is None else mixed.data_ptr(), m,
                         centre, prog.ctypes.data, len(prog), kept.ctypes.data, len(kept), out.data_ptr())
    if err:
        raise MemoryError("aggregation kernel: out of memory")
    return out


def gram(rows: Rows, centre: int = 0, diagonal: bool = False) -> torch.Tensor:
    """(B, n, n) float64: each entry's Gram matrix of its rows minus row `centre` (with
    `diagonal`, only the squared norms on the diagonal; the rest zero)."""
    lib = library()
    assert lib is not None
    batch, n, d = rows.shape
    out = torch.empty(batch, n, n, dtype=torch.float64)
    if lib.gm_gram(rows.address.ctypes.data, batch, n, d, centre, int(diagonal), out.data_ptr()):
        raise MemoryError("aggregation kernel: out of memory")
    return out
