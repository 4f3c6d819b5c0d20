"""The networks a method or a probe trains (backbones, heads) and how they are optimised."""
