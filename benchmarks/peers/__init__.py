"""Peers run in the accuracy harness with their own QAT layers (optional dependencies: pip install -e ".[peers]")."""
