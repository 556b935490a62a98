"""The dataset card (`README.md`) of a published cache: YAML front matter the Hub indexes, then prose."""

from __future__ import annotations

from typing import Any

TASKS = ["image-feature-extraction"]
TAGS = ["visual-feature-search", "features", "embeddings", "zarr"]


def render_card(repo_id: str, cache: dict[str, Any], *, license: str = "other",
                revision: str | None = None) -> str:
    """The card for `repo_id` holding `cache` (as `encode.cache_facts` returns it)."""
    from huggingface_hub import DatasetCardData

    n, channels, height, width = cache["shape"]
    data = DatasetCardData(
        license=license, task_categories=TASKS, tags=TAGS, pretty_name=f"VFS features: {cache['model']} "
        f"{cache['layer']} on {cache['dataset']}", viewer=False,
        vfs_cache={key: cache[key] for key in ("model", "weights_id", "layer", "dataset", "shape",
                                               "stored_shape", "dtype", "grid", "channels", "n", "codec",
                                               "input_size")})
    pinned = f', revision="{revision}"' if revision else ""
    labels = ", ".join(cache.get("label_names", [])) or "none"
    return f"""---
{data.to_yaml()}
---

# {cache['model']} `{cache['layer']}` features of {cache['dataset']}

A feature cache for [Visual Feature Search](https://arxiv.org/abs/2211.15060): the activations of layer
`{cache['layer']}` of `{cache['model']}` for {n:,} images of `{cache['dataset']}`, for exact masked-window
cosine search (paint a region on a query image, find the most similar regions in the dataset).

Open it in two lines of Python (files download on demand into the Hugging Face cache):

```python
import hub_caches
cache = hub_caches.open("{repo_id}"{pinned})   # a vfs FeatureCache, shape ({n}, {channels}, {height}, {width})
```

or download everything first with `python -m hub_caches pull {repo_id}`.

| | |
| --- | --- |
| model | `{cache['model']}` (weights `{cache['weights_id']}`), input {cache['input_size']} px |
| layer | `{cache['layer']}` |
| dataset | `{cache['dataset']}`, labels: {labels} |
| shape | ({n}, {channels}, {height}, {width}) = (N, C, H, W), stored ({n}, {height}, {width}, {channels}) |
| dtype | {cache['dtype']}, compressed with blosc {cache['codec']} + byte shuffle, crc32c per chunk |
| size | {cache['size_bytes'] / 2**20:.1f} MiB |

## Layout

`cache.zarr/` is a Zarr v3 group: `features` (N, H, W, C), `sq_norms` (N, H, W) float32 (squared L2
norm of each feature vector), `labels`, `ids`, `image_sizes`, `thumbnails`, and per-block byte sizes
that the reader checks. `manifest.json` holds the sha256 of every file; the reader verifies each file
against it before use, so a damaged or incomplete download is an error, never zeros.

## License

The features derive from the images of `{cache['dataset']}` and the weights of `{cache['model']}`; their
licenses apply (declared here as `{license}`).
"""
