"""Voronoi constraints (voronoi paper, Section 3, Problem 2 and Figure 2).

An adversarial example for a training sample x must stay in x's Voronoi cell: ||x' - x||_p <= ||x' - z||_p for the
other samples z.  As in the paper, only the m nearest samples of EACH other class constrain x (m(C-1) constraints;
same-class samples impose none), found by exact nearest-neighbour search (faiss).  "When the dataset remains constant
throughout the course of training, this search can be performed once before training begins and reused at each
iteration" (Section 4, Implementation Details): :meth:`NeighbourIndex.all_neighbours` does that for every training
sample (optionally cached on disk); :meth:`NeighbourIndex.query` serves inputs that are not training samples
(augmented batches, for which the paper re-queries per iteration).

The attack (:func:`voronoi_attack`) takes steps in the gradient direction from x, checks the constraints before
accepting each step, and stops updating a sample at its first violation, keeping the last valid iterate.  The check
skips constraints that cannot be violated yet: by the triangle inequality ||u - z_k|| >= ||x - z_k|| - ||u - x||, so
constraint k holds while ||u - x|| <= ||x - z_k|| / 2 (:class:`NeighbourCells`).  The exact alternatives: every
other-class training sample constrains (:class:`ExactCell`), and the exact L2 projection onto a cell
(:func:`project_onto_cell`, a quadratic program in cvxpy).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode, steepest_ascent

logger = logging.getLogger("advrep.voronoi")

# A constraint is skipped while ||u - x|| < (1 - SKIP_MARGIN) ||x - z_k|| / 2: then ||u - z_k|| exceeds ||u - x|| by
# a relative 2e-4 at least, far above float32 rounding of the distances, so skipping never changes a decision.
SKIP_MARGIN = 1e-4
CACHE_FORMAT = 1  # bump when the cached arrays change meaning


def _norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """||v||_p over the last dimension."""
    if p == float("inf"):
        return v.abs().amax(-1)
    return torch.linalg.vector_norm(v, ord=p, dim=-1)


class NeighbourIndex:
    """Exact per-class nearest-neighbour indices (faiss ``IndexFlatL2``) over a training set, built once; queried
    for the m nearest samples of each class other than the query's own.

    :meth:`all_neighbours` answers that query once for every training sample (what the paper does when the training
    set is fixed); :meth:`neighbour_distances` adds the p-norm distance to each of those neighbours.  Both are kept in
    memory and, given a ``cache_dir``, in ``.npy`` files named by a hash of the data, the labels and m, so a resumed
    run (or another run on the same data) reads them instead of searching again.
    """

    def __init__(self, train: np.ndarray, train_labels: np.ndarray):
        import faiss

        self.train = np.ascontiguousarray(np.asarray(train).reshape(len(train), -1), dtype=np.float32)
        self.labels = np.asarray(train_labels)
        if len(self.labels) != len(self.train):
            raise ValueError(f"{len(self.train)} training samples but {len(self.labels)} labels")
        self.classes = np.unique(self.labels)
        self.members, self.indices = {}, {}
        for c in self.classes:
            self.members[c] = np.flatnonzero(self.labels == c)
            self.indices[c] = faiss.IndexFlatL2(self.train.shape[1])
            self.indices[c].add(self.train[self.members[c]])
        self._neighbours: dict[int, np.ndarray] = {}
        self._distances: dict[tuple[int, float], np.ndarray] = {}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.train)

    @property
    def points(self) -> torch.Tensor:
        """The training set as an (N, D) float32 tensor sharing memory with :attr:`train`."""
        return torch.from_numpy(self.train)

    def query(self, queries: np.ndarray, query_labels: np.ndarray, m: int) -> np.ndarray:
        """Indices (Q, m*(C-1)) into the training set.  Classes with fewer than m samples contribute all they have
        (padded by repeating their nearest, which adds no new constraint)."""
        queries = np.ascontiguousarray(np.asarray(queries).reshape(len(queries), -1), dtype=np.float32)
        query_labels = np.asarray(query_labels)
        if not np.isin(query_labels, self.classes).all():
            raise ValueError("every query label must be one of the training classes")
        out = np.empty((len(queries), m * (len(self.classes) - 1)), dtype=np.int64)
        slot = np.zeros(len(queries), dtype=np.int64)
        for c in self.classes:
            q_idx = np.flatnonzero(query_labels != c)
            if len(q_idx) == 0:
                continue
            k = min(m, len(self.members[c]))
            _, nn_idx = self.indices[c].search(queries[q_idx], k)
            found = self.members[c][nn_idx]
            if k < m:
                found = np.concatenate([found, np.repeat(found[:, :1], m - k, axis=1)], axis=1)
            out[q_idx[:, None], slot[q_idx, None] + np.arange(m)[None, :]] = found
            slot[q_idx] += m
        return out

    def constraints(self, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
        """The constraining samples z (B, m*(C-1), ...) for a batch, on x's device and dtype."""
        idx = self.query(x.detach().cpu().numpy(), y.cpu().numpy(), m)
        z = torch.from_numpy(self.train[idx]).to(device=x.device, dtype=x.dtype)
        return z.view(x.shape[0], idx.shape[1], *x.shape[1:])

    # ------------------------------------------------------------ once per training set

    def fingerprint(self) -> str:
        """sha256 of the training data, the labels and the cache format (names the cache files)."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"advrep.voronoi/{CACHE_FORMAT}:{self.train.shape}:{self.labels.dtype}".encode())
            h.update(memoryview(self.train).cast("B"))
            h.update(np.ascontiguousarray(self.labels).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def cache_file(self, cache_dir, what: str) -> Path:
        return Path(cache_dir) / f"voronoi-{what}-{self.fingerprint()[:20]}.npy"

    def all_neighbours(self, m: int, cache_dir=None, chunk: int = 4096) -> np.ndarray:
        """(N, m*(C-1)) int64: for every training sample, the :meth:`query` answer (the m nearest training samples
        of each other class, exact), computed once in chunks of ``chunk`` queries (memory stays bounded) and kept.
        With ``cache_dir``, read from / written to (atomically) ``voronoi-neighbours-m<m>-<hash>.npy`` there."""
        m = int(m)
        if m not in self._neighbours:
            k = m * (len(self.classes) - 1)
            path = None if cache_dir is None else self.cache_file(cache_dir, f"neighbours-m{m}")
            nb = self._load(path, (len(self), k), np.int64)
            if nb is not None and not ((nb >= 0) & (nb < len(self))).all():
                logger.warning("%s holds out-of-range indices: recomputing", path)
                nb = None
            if nb is None:
                nb = np.empty((len(self), k), dtype=np.int64)
                for s in range(0, len(self), chunk):
                    nb[s:s + chunk] = self.query(self.train[s:s + chunk], self.labels[s:s + chunk], m)
                self._save(path, nb)
            self._neighbours[m] = nb
        return self._neighbours[m]

    def neighbour_distances(self, m: int, p: float, cache_dir=None, chunk: int = 1024) -> np.ndarray:
        """(N, m*(C-1)) float32: ||x_i - z_ik||_p for the neighbours of :meth:`all_neighbours` (computed directly
        from the points, not from faiss's expanded squared distances), kept and optionally cached like them."""
        key = (int(m), float(p))
        if key not in self._distances:
            nb = self.all_neighbours(m, cache_dir)
            ptag = "inf" if p == float("inf") else f"{float(p):g}"
            path = None if cache_dir is None else self.cache_file(cache_dir, f"distances-m{m}-p{ptag}")
            d = self._load(path, nb.shape, np.float32)
            if d is None:
                pts, nbt = self.points, torch.from_numpy(nb)
                d = np.empty(nb.shape, dtype=np.float32)
                with torch.no_grad():
                    for s in range(0, len(self), chunk):
                        d[s:s + chunk] = neighbour_distances(pts, nbt[s:s + chunk], pts[s:s + chunk], p).numpy()
                self._save(path, d)
            self._distances[key] = d
        return self._distances[key]

    @staticmethod
    def _load(path, shape, dtype):
        if path is None or not path.exists():
            return None
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("cannot read %s (%s): recomputing", path, e)
            return None
        if a.shape != tuple(shape) or a.dtype != dtype:
            logger.warning("%s holds %s %s, expected %s %s: recomputing", path, a.shape, a.dtype, shape, dtype)
            return None
        logger.info("read %s", path)
        return a

    @staticmethod
    def _save(path, a) -> None:
        if path is None:
            return
        from ..io import atomic_path

        with atomic_path(path) as tmp:
            np.save(tmp, a)
        logger.info("wrote %s", path)


def other_class_neighbours(queries: np.ndarray, query_labels: np.ndarray, train: np.ndarray,
                           train_labels: np.ndarray, m: int) -> np.ndarray:
    """Indices (Q, m*(C-1)) into ``train`` of the ``m`` nearest training samples of each class other than the
    query's own (exact L2 search with faiss); see :class:`NeighbourIndex`."""
    return NeighbourIndex(train, train_labels).query(queries, query_labels, m)


def neighbour_distances(points: torch.Tensor, neighbours: torch.Tensor, x: torch.Tensor, p: float,
                        chunk: int = 256) -> torch.Tensor:
    """(B, K) distances ||x_b - points[neighbours[b, k]]||_p, gathered ``chunk`` rows at a time."""
    xf = x.reshape(len(x), -1)
    out = torch.empty(neighbours.shape, dtype=xf.dtype, device=xf.device)
    for s in range(0, len(xf), chunk):
        z = points[neighbours[s:s + chunk]].to(xf.dtype)
        # direct differences (no ||a||^2 + ||b||^2 - 2ab expansion, which loses digits)
        out[s:s + chunk] = torch.cdist(xf[s:s + chunk, None, :], z, p=p,
                                       compute_mode="donot_use_mm_for_euclid_dist")[:, 0, :]
    return out


def cell_violation(x_adv: torch.Tensor, x: torch.Tensor, z: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """max_k ( ||x_adv - x||_p - ||x_adv - z_k||_p ) per sample: <= 0 inside the (partial) Voronoi cell of x.

    ``x_adv``, ``x``: (B, ...); ``z``: (B, K, ...) the constraining samples.
    """
    b = x.shape[0]
    d_self = (x_adv - x).reshape(b, -1).norm(p=p, dim=1)
    d_others = (x_adv.reshape(b, 1, -1) - z.reshape(b, z.shape[1], -1)).norm(p=p, dim=2)
    return (d_self[:, None] - d_others).amax(1)


class NeighbourCells:
    """The (partial) Voronoi cells of a batch x (B, ...): sample b is constrained by ``points[neighbours[b, k]]``.

    ``points``: (N, D) (a training set, or the batch's own z flattened); ``neighbours``: (B, K) indices into it;
    ``distances``: (B, K) ||x_b - z_bk||_p if known (precomputed per training set), else computed here.

    Both checks give exactly the decision of :func:`cell_violation` ``<= 0`` while computing ||u - z_k|| only for
    constraints that an iterate u can have reached.  :meth:`inside` (any iterates): constraint k cannot be violated
    while ||u - x|| < ||x - z_k|| / 2 (triangle inequality).  :meth:`check_step` (the iterates of one attack, in
    order) keeps, per constraint, a lower bound h_k on the distance from a reference iterate u_k to the face of
    constraint k -- the exact distance to the bisector hyperplane (||u_k - z_k||^2 - ||u_k - x||^2) / (2 ||x - z_k||)
    for p = 2, (||u_k - z_k|| - ||u_k - x||) / 2 for other p -- and skips k while the path length travelled since
    u_k is below h_k; a constraint it checks becomes its own reference.  So a constraint is checked a few times per
    attack, not at every step once the iterate has moved half a neighbour distance away.
    """

    def __init__(self, points: torch.Tensor, neighbours: torch.Tensor, x: torch.Tensor, p: float = 2.0,
                 distances: torch.Tensor | None = None):
        self.x = x.detach().reshape(len(x), -1)
        self.points = points.reshape(len(points), -1)
        self.neighbours = neighbours.to(self.points.device, torch.long)
        self.p = float(p)
        if self.neighbours.shape[0] != len(self.x):
            raise ValueError(f"{len(self.x)} samples but neighbours for {self.neighbours.shape[0]}")
        if distances is None:
            distances = neighbour_distances(self.points, self.neighbours, self.x, self.p)
        self.distances = distances.to(self.x.dtype)
        self.start()

    @classmethod
    def from_samples(cls, z: torch.Tensor, x: torch.Tensor, p: float = 2.0) -> "NeighbourCells":
        """From the constraining samples themselves, z (B, K, ...)."""
        b, k = z.shape[:2]
        nb = torch.arange(b * k, device=z.device).view(b, k)
        return cls(z.reshape(b * k, -1), nb, x, p)

    def _check(self, uf, d_self, rows, r, k):
        """Exact check of the pairs (r, k) (r: positions in ``rows``): ||u - z|| per pair and the rows' decision."""
        ok = torch.ones(len(rows), dtype=torch.bool, device=uf.device)
        if len(r) == 0:
            return uf.new_empty(0), ok
        z = self.points[self.neighbours[rows[r], k]].to(uf.dtype)
        d_other = _norm(uf[r] - z, self.p)
        ok[r[d_self[r] > d_other]] = False
        return d_other, ok

    def inside(self, u: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) bool: iterate ``u[r]`` of sample ``rows[r]`` satisfies every constraint (``rows``: all by default).
        Stateless (any iterates, any order)."""
        rows = torch.arange(len(self.x), device=self.x.device) if rows is None else rows
        uf = u.reshape(len(u), -1)
        d_self = _norm(uf - self.x[rows], self.p)
        dist = self.distances[rows]
        # skip k while ||u - x|| < ||x - z_k|| / 2, less a slack for rounding
        r, k = (d_self[:, None] * (1 + SKIP_MARGIN) >= dist * (0.5 - SKIP_MARGIN)).nonzero(as_tuple=True)
        return self._check(uf, d_self, rows, r, k)[1]

    def start(self) -> None:
        """Forget the path: every sample's next iterate is measured from x (see :meth:`check_step`).

        State, per constraint (b, k), as thresholds (rounding slack included): while the reference of k is x,
        check it once ||u - x|| (1 + SKIP_MARGIN) reaches ``at_x[b, k]``; afterwards, once the path length (plus
        SKIP_MARGIN ||u - x||) reaches ``on_path[b, k]`` = path length at the reference + distance to the face.
        Their row minima let rows with nothing to check skip the per-constraint work."""
        self.at_x = self.distances * (0.5 - SKIP_MARGIN)
        self.on_path = torch.full_like(self.distances, float("inf"))
        self.at_x_min, self.on_path_min = self._row_min(self.at_x), self._row_min(self.on_path)
        self.length = torch.zeros(len(self.x), dtype=self.x.dtype, device=self.x.device)  # path length so far
        self.last = self.x.clone()  # last accepted iterate

    def _row_min(self, t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] == 0:
            return torch.full((t.shape[0],), float("inf"), dtype=t.dtype, device=t.device)
        return t.amin(1)

    def check_step(self, u: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) bool: like :meth:`inside`, for the next iterates ``u`` of samples ``rows`` on one path that starts at
        x (:meth:`start`); the iterates judged inside become the samples' last iterates.  Other iterates may not
        be checked between two calls (the path length since the last iterate is what bounds the move)."""
        take = (lambda t: t) if rows is None else (lambda t: t[rows])  # all rows: no copies
        rows = torch.arange(len(self.x), device=self.x.device) if rows is None else rows
        uf = u.reshape(len(u), -1)
        d_self = _norm(uf - take(self.x), self.p)
        length = take(self.length) + _norm(uf - take(self.last), self.p)
        ds, ls = d_self * (1 + SKIP_MARGIN), length + SKIP_MARGIN * d_self
        cand = ((ds >= take(self.at_x_min)) | (ls >= take(self.on_path_min))).nonzero().squeeze(1)
        r = k = cand
        if len(cand):
            rc = rows[cand]
            need = (ds[cand, None] >= self.at_x[rc]) | (ls[cand, None] >= self.on_path[rc])
            rs, k = need.nonzero(as_tuple=True)
            r = cand[rs]
        d_other, ok = self._check(uf, d_self, rows, r, k)
        if len(r):  # the checked constraints are measured from u from now on (used only if u is accepted)
            if self.p == 2:  # exact distance from u to the bisector hyperplane of x and z_k
                face = ((d_other - d_self[r]) * (d_other + d_self[r])
                        / (2 * self.distances[rows[r], k]).clamp_min(torch.finfo(uf.dtype).tiny))
            else:  # triangle inequality
                face = 0.5 * (d_other - d_self[r])
            keep = ok[r]
            rk, kk = rows[r[keep]], k[keep]
            self.at_x[rk, kk] = float("inf")
            self.on_path[rk, kk] = length[r[keep]] + face[keep] - SKIP_MARGIN * self.distances[rk, kk]
            changed = rk.unique()
            self.at_x_min[changed] = self._row_min(self.at_x[changed])
            self.on_path_min[changed] = self._row_min(self.on_path[changed])
        self.length[rows[ok]] = length[ok]
        self.last[rows[ok]] = uf[ok]
        return ok


class ExactCell:
    """Exact cross-class cell membership: x' is in the cell of (x, y) iff no training sample of another class is
    closer to x' than x is (a nearest-neighbour query per iterate; p = 2; the ``refine`` nearest by fast distances
    are measured again from differences).  Use instead of the paper's m-nearest heuristic when exactness matters
    more than speed."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, chunk: int = 65536, refine: int = 8):
        self.train_x = train_x.reshape(len(train_x), -1)
        self.train_y = train_y
        self.chunk = chunk
        self.refine = refine  # nearest candidates (by the fast distances) whose distance is recomputed exactly

    def violation(self, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = x_adv.reshape(b, -1)
        best = torch.full((b,), float("inf"), dtype=q.dtype, device=q.device)
        for s in range(0, len(self.train_x), self.chunk):
            t, ty = self.train_x[s:s + self.chunk].to(q.dtype), self.train_y[s:s + self.chunk]
            d = torch.cdist(q, t)  # fast (matrix product), a few digits lost: only to pick candidates
            d = d.masked_fill(ty[None, :] == y[:, None], float("inf"))
            cand = d.topk(min(self.refine, d.shape[1]), dim=1, largest=False).indices
            exact = (q[:, None, :] - t[cand]).norm(dim=2)  # the candidates' distances, from differences
            exact = exact.masked_fill(ty[cand] == y[:, None], float("inf"))
            best = torch.minimum(best, exact.amin(1))
        return (q - x.reshape(b, -1)).norm(dim=1) - best


def voronoi_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, z, *, steps: int, alpha: float,
                   step_norm: str = "l2", p: float = 2.0, box: tuple[float, float] | None = (0.0, 1.0),
                   loss_fn=None, return_path: bool = False, on_violation: str = "stop"):
    """Constrained steps (Figure 2): gradient steps of size ``alpha`` (steepest ascent for ``step_norm``); before
    accepting a step, check the Voronoi constraints; a sample stops at its first violation and keeps its last valid
    iterate.  ``z``: the constraining samples (B, K, ...), or a :class:`NeighbourCells` (the same, as indices into a
    training set, e.g. precomputed per training sample), or an :class:`ExactCell` (every other-class training sample
    constrains; p = 2).  Iterates also stay in ``box`` ([0, 1] for images; ``None`` for unbounded inputs such as
    PLANES).  Attacked in eval mode.

    ``on_violation="project"`` (p = 2) replaces the paper's stop by a projected step: a step that leaves the cell is
    replaced by the exact Euclidean projection of its end point onto the cell (and ``box``), a quadratic program per
    sample and step (:func:`project_into_cell`); the sample goes on.  Slow (cvxpy): for small problems.

    Returns x_adv (and, with ``return_path``, the list of iterates for plotting).
    """
    loss_fn = loss_fn or (lambda logits, t: nn.functional.cross_entropy(logits, t, reduction="none"))
    if on_violation not in ("stop", "project"):
        raise ValueError(f"on_violation must be 'stop' or 'project', got {on_violation!r}")
    if on_violation == "project" and p != 2:
        raise ValueError(f"on_violation='project' projects onto L2 cells; p = {p}")
    x = x.detach()
    cur = x.clone()
    b = x.shape[0]
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    if isinstance(z, ExactCell):
        if p != 2:
            raise ValueError(f"ExactCell checks L2 cells; p = {p}")
        # half the distance from x to its nearest other-class sample: no iterate closer to x can leave the cell
        safe = (-z.violation(x, x, y)) * (0.5 * (1 - SKIP_MARGIN))
    elif not isinstance(z, NeighbourCells):
        z = NeighbourCells.from_samples(z, x, p)
    elif z.p != float(p):
        raise ValueError(f"the cells were built for p = {z.p}, the attack asks p = {p}")
    if isinstance(z, NeighbourCells):
        z.start()
    path = [cur.clone()] if return_path else None
    with eval_mode(model):
        for _ in range(steps):
            rows = active.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            all_rows = len(rows) == b
            xa = (cur.clone() if all_rows else cur[rows]).requires_grad_(True)
            loss = loss_fn(model(xa), y if all_rows else y[rows])
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            nxt = xa.detach() + alpha * steepest_ascent(grad, step_norm)
            if box is not None:
                nxt = nxt.clamp(*box)
            if isinstance(z, ExactCell):
                ok = torch.ones(len(rows), dtype=torch.bool, device=x.device)
                near = (nxt - x[rows]).reshape(len(rows), -1).norm(dim=1) < safe[rows]
                far = (~near).nonzero().squeeze(1)
                if len(far):
                    ok[far] = z.violation(nxt[far], x[rows[far]], y[rows[far]]) <= 0
            else:
                ok = z.check_step(nxt, None if all_rows else rows)
            cur[rows[ok]] = nxt[ok]
            if on_violation == "project" and not ok.all():
                out = (~ok).nonzero().squeeze(1)
                proj = torch.stack([project_into_cell(nxt[j], x[rows[j]], y[rows[j]], z, rows[j], box)
                                    for j in out.tolist()])
                if isinstance(z, ExactCell):
                    kept = z.violation(proj, x[rows[out]], y[rows[out]]) <= 0
                else:
                    kept = z.check_step(proj, rows[out])
                cur[rows[out[kept]]] = proj[kept]
                ok = ok.clone()
                ok[out[kept]] = True  # still active; a projection the strict check refuses stops the sample
            active[rows[~ok]] = False
            if return_path:
                path.append(cur.clone())
    return (cur, path) if return_path else cur


def project_into_cell(v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cells, row: int,
                      box: tuple[float, float] | None = None, margin: float = 1e-6, max_rounds: int = 50
                      ) -> torch.Tensor:
    """The Euclidean projection of ``v`` onto the L2 cell of sample ``row`` (label ``y``) in ``cells``: the
    m-nearest cell of a :class:`NeighbourCells` (one quadratic program), or the exact cell of an
    :class:`ExactCell` by cutting planes: project onto the faces found so far, add the other-class samples closer
    to the projection than x, repeat until there are none (then it is the projection onto the whole cell).  Faces
    are moved ``margin`` towards x (solver tolerance)."""
    shape, dtype = v.shape, v.dtype
    vn, xn = (t.detach().reshape(-1).double().cpu().numpy() for t in (v, x))
    if isinstance(cells, NeighbourCells):
        zn = cells.points[cells.neighbours[row]].double().cpu().numpy()
        u = project_onto_cell(vn, xn, zn, box, margin)
    else:
        pts = cells.train_x.double().cpu().numpy()
        other = pts[(cells.train_y != y).cpu().numpy()]
        faces = np.empty((0, len(xn)))
        u = vn
        for _ in range(max_rounds):
            d_self = np.linalg.norm(u - xn)
            d_other = np.linalg.norm(other - u, axis=1)
            closer = np.flatnonzero(d_other < d_self)
            if len(closer) == 0:
                break
            faces = np.concatenate([faces, other[closer[np.argsort(d_other[closer])[:16]]]])
            u = project_onto_cell(vn, xn, faces, box, margin)
        else:
            raise RuntimeError(f"no projection onto the exact cell after {max_rounds} rounds of cutting planes")
        if box is not None:
            u = np.clip(u, *box)
    return torch.from_numpy(u).to(device=v.device, dtype=dtype).reshape(shape)


def project_onto_cell(v: np.ndarray, x: np.ndarray, z: np.ndarray, box: tuple[float, float] | None = None,
                      margin: float = 0.0) -> np.ndarray:
    """Exact Euclidean projection of ``v`` onto the L2 Voronoi cell of ``x`` w.r.t. the samples ``z`` (K, D):
    {u : ||u - x||_2 <= ||u - z_k||_2 for all k} = {u : 2 (z_k - x) . u <= ||z_k||^2 - ||x||^2}, a polyhedron, so
    the projection is a quadratic program (cvxpy, CLARABEL).  ``box`` optionally intersects with [lo, hi]^D;
    ``margin`` > 0 moves every face that far towards x (so that the solver's tolerance cannot put u outside)."""
    import cvxpy as cp

    v, x, z = (np.asarray(a, dtype=np.float64).ravel() if a.ndim == 1 else np.asarray(a, dtype=np.float64)
               for a in (v, x, z))
    z = z.reshape(len(z), -1)
    u = cp.Variable(v.size)
    cons = [2 * (z - x) @ u <= (z * z).sum(1) - x @ x - 2 * margin * np.linalg.norm(z - x, axis=1)]
    if box is not None:
        cons += [u >= box[0], u <= box[1]]
    cp.Problem(cp.Minimize(cp.sum_squares(u - v)), cons).solve(solver=cp.CLARABEL)
    if u.value is None:
        raise RuntimeError("projection onto the Voronoi cell failed (solver returned no point)")
    return u.value
