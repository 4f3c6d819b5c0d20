"""cssl: contrastive self-supervised learning, with negative sampling as composable parts."""

__version__ = "0.1.0"
