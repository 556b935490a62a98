"""The exact masked-window search: `window` (`search`, `best_windows`) over the kernels in `kernels`
and `numba_kernel`. Imports the cache and model layers, never analysis.

Named `retrieval`, not `search`: importing a submodule `vfs.search` would replace the public
function `vfs.search` with the module."""
