"""The graph IR of a loaded bundle: every field checked against its op's definition, then shapes, kinds and ranges proven."""
