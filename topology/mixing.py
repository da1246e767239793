"""Gossip mixing matrices and how fast they mix.

Metropolis-Hastings weights: W_ij = 1 / (1 + max(d_i, d_j)) for each edge, W_ii = 1 - sum.
Symmetric and doubly stochastic for any undirected graph, computed from degrees alone,
so each node knows its own row from its neighbours' degrees.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a peer needs only mh_weights: networkx and scipy load where they are used
    import networkx as nx
    import scipy.sparse as sp

DENSE_LIMIT = 1500


def metropolis_hastings(graph: nx.Graph) -> tuple[list, sp.csr_matrix]:
    """(node order, sparse W)."""
    import scipy.sparse as sp

    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    deg = np.array([graph.degree(v) for v in nodes], dtype=float)
    row_list, col_list = [], []
    for u, v in graph.edges():
        row_list.append(index[u])
        col_list.append(index[v])
    rows, cols = np.array(row_list, dtype=int), np.array(col_list, dtype=int)
    w = 1.0 / (1.0 + np.maximum(deg[rows], deg[cols]))
    n = len(nodes)
    off = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                        shape=(n, n)).tocsr()
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    return nodes, (off + sp.diags(diag)).tocsr()


def mh_weights(own_degree: int, neighbour_degrees: dict) -> tuple[float, dict]:
    """One node's row of the Metropolis-Hastings matrix: (self weight, {neighbour: weight})."""
    w = {j: 1.0 / (1.0 + max(own_degree, d)) for j, d in neighbour_degrees.items()}
    return 1.0 - sum(w.values()), w


def second_eigenvalue_modulus(w: sp.csr_matrix) -> float:
    """max(|lambda_2|, |lambda_n|) of a symmetric stochastic matrix (lambda_1 = 1)."""
    n = w.shape[0]
    if n <= DENSE_LIMIT:
        ev = np.linalg.eigvalsh(w.toarray())
        return float(max(abs(ev[0]), abs(ev[-2]))) if n > 1 else 0.0
    import scipy.sparse.linalg as spla

    # Sparse: the top two and the bottom one eigenvalue (Lanczos on a symmetric matrix).
    top = spla.eigsh(w, k=2, which="LA", return_eigenvectors=False, tol=1e-8, maxiter=20 * n)
    bottom = spla.eigsh(w, k=1, which="SA", return_eigenvectors=False, tol=1e-8, maxiter=20 * n)
    return float(max(abs(sorted(top)[0]), abs(bottom[0])))


def spectral_gap(w: sp.csr_matrix) -> float:
    return 1.0 - second_eigenvalue_modulus(w)


def rounds_to_consensus(gap: float, precision: float = 1e-3) -> float:
    """Gossip rounds for the disagreement to shrink by `precision`: ln(1/eps) / -ln(1 - gap)."""
    if gap <= 0:
        return math.inf
    if gap >= 1:
        return 1.0
    return math.log(1.0 / precision) / -math.log(1.0 - gap)
