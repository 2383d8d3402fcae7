"""The reference backend: executes a proven graph with its ops' kernels; the oracle the other backends match."""
