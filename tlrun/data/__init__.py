"""Datasets by name, splits, transforms and loaders."""
