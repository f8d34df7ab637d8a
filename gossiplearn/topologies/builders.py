"""Topology builders and the registry that maps spec names to them.

Adding a topology is one builder function plus one :data:`TOPOLOGIES` line. A builder is
called as ``build(num_peers, seed, *params)`` with parameters already parsed and range
checked; it raises :class:`~gossiplearn.errors.TopologyError` for constraints that depend
on ``num_peers`` and returns a graph on nodes ``0..num_peers-1``. Connectivity is checked by
the caller, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossiplearn.errors import TopologyError

#: How many point sets ``geometric`` draws before it lets a disconnected graph through
#: (to be refused, with advice, by build_topology).
GEOMETRIC_TRIES = 20


@dataclass(frozen=True)
class Param:
    """One ``:``-separated parameter of a topology spec."""

    name: str
    kind: type[int] | type[float]
    valid: Callable[[float], bool]
    #: The range rule, as shown to users, e.g. ``"0 < P <= 1"``.
    rule: str


@dataclass(frozen=True)
class Topology:
    """A registry entry: how to build a topology and how to parse its parameters."""

    build: Callable[..., nx.Graph]
    params: tuple[Param, ...] = ()
    #: How many trailing parameters may be left out (the builder gives them defaults).
    optional: int = 0
    #: Advice, given the number of peers, for when the graph comes out disconnected.
    hint: Callable[[int], str] | None = None


# ---- builders ------------------------------------------------------------------------


def ring(num_peers: int, seed: int) -> nx.Graph:
    """Each peer linked to its two ring neighbours."""
    return nx.cycle_graph(num_peers)


def complete(num_peers: int, seed: int) -> nx.Graph:
    """Every peer linked to every other."""
    return nx.complete_graph(num_peers)


def star(num_peers: int, seed: int) -> nx.Graph:
    """Peer 0 in the middle, linked to all others."""
    return nx.star_graph(num_peers - 1)


def exponential(num_peers: int, seed: int) -> nx.Graph:
    """Peer i linked to i ± 2^k (mod N) for every 2^k < N: the D-PSGD exponential graph."""
    graph = nx.empty_graph(num_peers)
    hops = [2**k for k in range(math.ceil(math.log2(num_peers)))]
    for i in range(num_peers):
        for hop in hops:
            graph.add_edge(i, (i + hop) % num_peers)
            graph.add_edge(i, (i - hop) % num_peers)
    return graph


def regular(num_peers: int, seed: int, k: int) -> nx.Graph:
    """Uniformly random K-regular graph."""
    if k >= num_peers:
        raise TopologyError(f"regular:{k} needs K < number of peers ({num_peers})")
    if k * num_peers % 2:
        raise TopologyError(
            f"regular:{k} with {num_peers} peers is impossible: K * peers must be even"
        )
    return nx.random_regular_graph(k, num_peers, seed=seed)


def erdos_renyi(num_peers: int, seed: int, p: float) -> nx.Graph:
    """Each possible link present independently with probability P."""
    return nx.gnp_random_graph(num_peers, p, seed=seed)


def watts_strogatz(num_peers: int, seed: int, k: int, p: float) -> nx.Graph:
    """Ring lattice with K nearest neighbours, each link rewired with probability P."""
    if k >= num_peers:
        raise TopologyError(f"watts-strogatz:{k}:{p} needs K < number of peers ({num_peers})")
    try:
        return nx.connected_watts_strogatz_graph(num_peers, k, p, tries=100, seed=seed)
    except nx.NetworkXError as exc:  # it gives up after `tries` disconnected draws
        raise TopologyError(
            f"watts-strogatz:{k}:{p} with {num_peers} peers stayed disconnected after 100 "
            "tries; use a larger K or a smaller P"
        ) from exc


def barabasi_albert(num_peers: int, seed: int, m: int) -> nx.Graph:
    """Preferential attachment: each new peer links to M existing ones."""
    if m >= num_peers:
        raise TopologyError(f"barabasi-albert:{m} needs M < number of peers ({num_peers})")
    return nx.barabasi_albert_graph(num_peers, m, seed=seed)


def geometric(num_peers: int, seed: int, radius: float, cap: int | None = None) -> nx.Graph:
    """Peers at random points of the unit square, linked when closer than R.

    With CAP, every peer keeps at most CAP links, without ever cutting the graph apart:
    the links of a minimum spanning tree (shortest links first) are kept whatever the
    cap, and the other links are visited longest first and dropped while either end has
    too many. A Euclidean minimum spanning tree has no degree above 6, so for CAP >= 6
    the cap always holds; below that a peer may keep more tree links than CAP. A peer
    left over the cap has only tree links left (each other link of it was dropped when
    visited), so one pass suffices; it is deterministic. Node attribute ``pos`` holds
    each peer's position.

    Points that come out disconnected before any capping (an isolated peer) are drawn
    again, up to :data:`GEOMETRIC_TRIES` times, each draw seeded from ``(seed, attempt)``;
    a seed whose first draw is connected keeps its graph.
    """
    graph = nx.random_geometric_graph(num_peers, radius, dim=2, seed=seed)
    for attempt in range(1, GEOMETRIC_TRIES):
        if nx.is_connected(graph):
            break
        redraw = int(
            np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, attempt]).generate_state(1)[0]
        )
        graph = nx.random_geometric_graph(num_peers, radius, dim=2, seed=redraw)
    if cap is not None:
        _cap_degrees(graph, cap)
    return graph


def _cap_degrees(graph: nx.Graph, cap: int) -> None:
    def length(edge: tuple[int, int]) -> float:
        (x1, y1), (x2, y2) = graph.nodes[edge[0]]["pos"], graph.nodes[edge[1]]["pos"]
        return math.hypot(x1 - x2, y1 - y2)

    # Ties broken by node ids so the result never depends on set order.
    edges = sorted((tuple(sorted(e)) for e in graph.edges), key=lambda e: (length(e), e))
    tree = _spanning_tree(graph, edges)
    for u, v in reversed(edges):  # longest first
        if (u, v) not in tree and (graph.degree[u] > cap or graph.degree[v] > cap):
            graph.remove_edge(u, v)


def _spanning_tree(graph: nx.Graph, shortest_first: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Kruskal: the links of a minimum spanning forest (one tree per component)."""
    components = nx.utils.UnionFind(graph.nodes)
    tree = set()
    for u, v in shortest_first:
        if components[u] != components[v]:
            components.union(u, v)
            tree.add((u, v))
    return tree


# ---- parameter rules -----------------------------------------------------------------


def _positive_int(name: str) -> Param:
    return Param(name, int, lambda v: v >= 1, f"{name} >= 1")


_PROBABILITY = Param("P", float, lambda v: 0 <= v <= 1, "0 <= P <= 1")


def _regular_hint(num_peers: int) -> str:
    return "use a larger K (K >= 3 is connected with high probability)"


def _erdos_renyi_hint(num_peers: int) -> str:
    # Sharp threshold for G(n, p) connectivity: p = ln(n) / n.
    threshold = math.log(num_peers) / num_peers
    return f"use a larger P (connectivity needs roughly P > ln(N)/N = {threshold:.3g})"


def _geometric_hint(num_peers: int) -> str:
    # Connectivity threshold for random geometric graphs: pi r^2 n = ln(n).
    threshold = math.sqrt(math.log(num_peers) / (math.pi * num_peers))
    return f"use a larger R (connectivity needs roughly R > sqrt(ln(N)/(pi*N)) = {threshold:.3g})"


#: Spec name -> registry entry. Order is the order shown to users.
TOPOLOGIES: dict[str, Topology] = {
    "ring": Topology(ring),
    "regular": Topology(
        regular,
        (Param("K", int, lambda v: v >= 1, "K >= 1"),),
        hint=_regular_hint,
    ),
    "erdos-renyi": Topology(
        erdos_renyi,
        (Param("P", float, lambda v: 0 < v <= 1, "0 < P <= 1"),),
        hint=_erdos_renyi_hint,
    ),
    "watts-strogatz": Topology(
        watts_strogatz,
        (Param("K", int, lambda v: v >= 2 and v % 2 == 0, "K even and >= 2"), _PROBABILITY),
    ),
    "barabasi-albert": Topology(barabasi_albert, (_positive_int("M"),)),
    "geometric": Topology(
        geometric,
        (Param("R", float, lambda v: v > 0, "R > 0"), _positive_int("CAP")),
        optional=1,
        hint=_geometric_hint,
    ),
    "complete": Topology(complete),
    "star": Topology(star),
    "exponential": Topology(exponential),
}


def usage(name: str) -> str:
    """The spec form of a registered topology, e.g. ``geometric:R[:CAP]``."""
    entry = TOPOLOGIES[name]
    required = len(entry.params) - entry.optional
    parts = [name]
    parts += [f":{p.name}" for p in entry.params[:required]]
    parts += [f"[:{p.name}]" for p in entry.params[required:]]
    return "".join(parts)
