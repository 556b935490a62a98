"""The model side: loading models (`loading`), their preprocessing (`preprocess`) and feature
extraction from any layer (`features`). The lowest layer of `vfs`: it imports nothing above it."""
