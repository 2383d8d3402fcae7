"""Passes over the graph: requantization folding and integer lowering."""
