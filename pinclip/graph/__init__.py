"""The Pin–Board graph and neighbor mining by random walks (docs/training.md, "The batch")."""

from pinclip.graph.csr import BipartiteGraph
from pinclip.graph.random_walk import MinedNeighbors, RandomWalkConfig, mine_neighbors, random_walk_neighbors

__all__ = ["BipartiteGraph", "MinedNeighbors", "RandomWalkConfig", "mine_neighbors", "random_walk_neighbors"]
