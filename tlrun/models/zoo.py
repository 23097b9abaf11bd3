"""Registers tlrun's own architectures in the model registry."""

from tlrun.models import small  # noqa: F401  (registers lenet, small_resnet)
