"""Sinkhorn-Knopp self-labelling and the label-recomputation schedule."""
