"""The Pin–Board graph and neighbor mining by random walks (DESIGN.md §3, §7)."""

from pinclip.graph.csr import BipartiteGraph
from pinclip.graph.random_walk import MinedNeighbors, RandomWalkConfig, mine_neighbors, random_walk_neighbors

__all__ = ["BipartiteGraph", "MinedNeighbors", "RandomWalkConfig", "mine_neighbors", "random_walk_neighbors"]
