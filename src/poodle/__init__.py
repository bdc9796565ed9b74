"""poodle: PooDLe (pooled and dense self-supervised learning from naturalistic videos) in PyTorch."""

__version__ = "0.1.0.dev0"
