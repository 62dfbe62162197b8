"""Model backends and the loader registry."""
