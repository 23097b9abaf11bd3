"""tlrun: a config-driven experiment runner for transfer learning in PyTorch."""

__version__ = "0.1.0"
