"""Tools for reading a model's behaviour: similarity overlays (`overlays`), similarity decomposition
(`decompose`), sensitivity to rotation and scale (`sensitivity`), the papers' neighbour metrics
(`metrics`) and `python -m vfs experiment` (`experiment`). The top layer of `vfs`."""
