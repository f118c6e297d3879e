"""The data wing: where a dataset comes from (torchvision's or the user's own files), its class names, the
rows a subset keeps, and the loaders a trial trains on. Knows nothing of models or training."""
