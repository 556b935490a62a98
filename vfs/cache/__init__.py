"""Persisted features: the Zarr v3 layout (`format`), whole shard files (`shard_file`), building
(`build`), opening and verifying (`reader`) and the app's offline defaults (`defaults`).
Imports the model side (`vfs.models`), never search or analysis."""
