"""PyTorch to graph: the tracer, the exporter, and how calls and modules become op entries."""
