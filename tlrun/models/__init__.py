"""Model construction: registry, pretrained-weight resolution, head replacement."""
