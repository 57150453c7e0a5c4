"""Canonical form of a fused region's data: one text for every isomorphic region,
whatever its node names or order, the model it came from, the order models were
analysed in, or the run; different texts for regions that are not isomorphic.

A region is a labelled DAG: one node per external input (labelled by its signature)
and one per op row (labelled by its op, its constants with every node reference
replaced by a numbered slot, and whether its value leaves the region); an edge per
slot. The canonical numbering is the least encoding over an individualisation-
refinement search (colour refinement, then branching on the first non-singleton
cell), which is exact. Plain Python over JSON data (no torch), so a stored unit's
graph can be checked wherever units are read."""
from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass

FLOAT = "float"  # float constants (eps, scales) do not change the work: kind only


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _is_ref(obj) -> bool:
    return (isinstance(obj, dict) and len(obj) == 1 and ("ref" in obj or "in" in obj)
            and isinstance(next(iter(obj.values())), int))


def _walk(obj, leaf):
    """obj rebuilt with `leaf` applied to every node reference and float, in one fixed
    traversal order (lists in order, mappings by sorted key)."""
    if _is_ref(obj) or isinstance(obj, float):
        return leaf(obj)
    if isinstance(obj, list):
        return [_walk(x, leaf) for x in obj]
    if isinstance(obj, dict):
        if set(obj) == {"dict"} and isinstance(obj["dict"], dict):  # a literal mapping
            return {"dict": {k: _walk(obj["dict"][k], leaf) for k in sorted(obj["dict"])}}
        return {k: _walk(obj[k], leaf) for k in sorted(obj)}
    return obj


def labelled_dag(data: dict, in_labels: list) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(node labels, edges (src, dst, slot)); nodes 0..n_in-1 are the inputs."""
    n_in = len(in_labels)
    labels = [_dumps(["in", lab]) for lab in in_labels]
    outputs = set(data.get("outputs", []))
    edges = []
    for i, row in enumerate(data.get("nodes", [])):
        slots: list = []

        def leaf(x, slots=slots):
            if isinstance(x, float):
                return FLOAT
            kind, j = next(iter(x.items()))
            if not 0 <= j < (n_in if kind == "in" else i):
                raise ValueError(f"graph: row {i} reads {kind} {j}, which is not an earlier "
                                 f"row or an input")
            slots.append(j if kind == "in" else n_in + j)
            return {"slot": len(slots) - 1}
        body = _walk([row.get("args", []), {"dict": row.get("kwargs", {})}], leaf)
        labels.append(_dumps([row.get("op"), body, i in outputs]))
        edges += [(src, n_in + i, s) for s, src in enumerate(slots)]
    return labels, edges


def _refine(colors: list[int], ins: list, outs: list) -> list[int]:
    """Colour refinement to a fixed point. Colours are dense ranks of sorted signatures,
    so they depend on the graph's structure only, never on node numbering."""
    k = len(set(colors))
    while True:
        sigs = [(colors[v], tuple(sorted((s, colors[u]) for s, u in ins[v])),
                 tuple(sorted((s, colors[w]) for s, w in outs[v]))) for v in range(len(colors))]
        rank = {sig: r for r, sig in enumerate(sorted(set(sigs)))}
        colors = [rank[s] for s in sigs]
        if len(rank) == k:
            return colors
        k = len(rank)


def canonical_order(labels: list[str], edges: list[tuple[int, int, int]]) -> list[int]:
    """Nodes in canonical order: isomorphic graphs map onto one labelled graph."""
    n = len(labels)
    ins: list = [[] for _ in range(n)]
    outs: list = [[] for _ in range(n)]
    for u, v, s in edges:
        ins[v].append((s, u))
        outs[u].append((s, v))
    rank = {lab: r for r, lab in enumerate(sorted(set(labels)))}

    def encode(order):
        pos = {v: i for i, v in enumerate(order)}
        return tuple(sorted((pos[u], pos[v], s) for u, v, s in edges))

    def search(colors):
        colors = _refine(colors, ins, outs)
        sizes: dict[int, int] = {}
        for c in colors:
            sizes[c] = sizes.get(c, 0) + 1
        if len(sizes) == n:
            order = sorted(range(n), key=colors.__getitem__)
            return encode(order), order
        cell = min(c for c, m in sizes.items() if m > 1)
        best, twins = None, set()
        for v in (v for v in range(n) if colors[v] == cell):
            # two members with the same inputs and no users swap by an automorphism
            # that fixes everything else: one branch stands for both
            twin = tuple(sorted(ins[v])) if not outs[v] else ("node", v)
            if twin in twins:
                continue
            twins.add(twin)
            leaf = search([2 * c + (c == cell and u != v) for u, c in enumerate(colors)])
            if best is None or leaf[0] < best[0]:
                best = leaf
        return best

    return search([rank[lab] for lab in labels])[1] if n else []


@dataclass(frozen=True)
class CanonicalRegion:
    form: str          # the canonical text the key hashes
    key: str
    data: dict         # the region's data, rows and inputs in canonical order
    in_perm: tuple     # new input k is old input in_perm[k]
    out_perm: tuple    # new output k is old output out_perm[k] (position in "outputs")


def form_key(form: str) -> str:
    return hashlib.sha256(form.encode()).hexdigest()[:32]


def region_form(data: dict, in_labels: list) -> str:
    return canonical_region(data, in_labels).form


def canonical_region(data: dict, in_labels: list) -> CanonicalRegion:
    labels, edges = labelled_dag(data, in_labels)
    order = canonical_order(labels, edges)
    pos = {v: i for i, v in enumerate(order)}
    form = _dumps({"nodes": [labels[v] for v in order],
                   "edges": sorted((pos[u], pos[v], s) for u, v, s in edges)})
    n_in = len(in_labels)
    in_perm = tuple(sorted(range(n_in), key=pos.__getitem__))
    new_in = {old: new for new, old in enumerate(in_perm)}
    rows = _topological(data.get("nodes", []), edges, n_in, pos)
    new_id = {old: new for new, old in enumerate(rows)}

    def leaf(x):
        if isinstance(x, float):
            return x
        return {"ref": new_id[x["ref"]]} if "ref" in x else {"in": new_in[x["in"]]}
    nodes = [dict(data["nodes"][r], args=_walk(data["nodes"][r].get("args", []), leaf),
                  kwargs=_walk({"dict": data["nodes"][r].get("kwargs", {})}, leaf)["dict"])
             for r in rows]
    olds = list(data.get("outputs", []))
    out_perm = tuple(sorted(range(len(olds)), key=lambda i: new_id[olds[i]]))
    new = dict(data, nodes=nodes, outputs=[new_id[olds[i]] for i in out_perm])
    return CanonicalRegion(form, form_key(form), new, in_perm, out_perm)


def _topological(rows: list, edges: list, n_in: int, pos: dict) -> list[int]:
    """Row indices in a run order (each after the rows it reads) that breaks ties by
    canonical position, so isomorphic regions store the same rows in the same order."""
    deps = [0] * len(rows)
    users: list = [[] for _ in rows]
    for u, v, _ in edges:
        if u >= n_in:
            deps[v - n_in] += 1
            users[u - n_in].append(v - n_in)
    ready = [(pos[r + n_in], r) for r in range(len(rows)) if not deps[r]]
    heapq.heapify(ready)
    out = []
    while ready:
        _, r = heapq.heappop(ready)
        out.append(r)
        for w in users[r]:
            deps[w] -= 1
            if not deps[w]:
                heapq.heappush(ready, (pos[w + n_in], w))
    return out
