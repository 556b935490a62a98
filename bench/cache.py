"""Feature-cache benchmark: codecs, shard sizes, write rate, open and query times, size on disk.

    flock /tmp/vfs-heavy.lock python bench/cache.py [--images 50000] [--real 512] [--out /tmp/vfs-bench]

Features are REAL: efficientnet_lite0 activations (`bn2`, after its ReLU6, first 512 of 1280
channels, 7 x 7 at 224 px) of `--real` Fashion-MNIST test images, tiled to `--images` images
(extracting 50,000 at 224 px would take over an hour on 2 cores). Compression works per chunk (one
image), so tiling does not flatter the ratios. Each variant is written through the cache builder's
own block writer, then opened with `open_cache` in memory and streamed, and queried with
`vfs.search` (a 3 x 3 window and the full 7 x 7 mask). The reference package `visualfeaturesearch`
(`CachedSearchTool`, zarr 2 era) runs on the same Zarr data through a small `__len__` wrapper.
All times are wall-clock on this shared 2-core machine, warm page cache.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vfs
from vfs.cache.build import _finish, _open_or_create, _versions, _write_block
from vfs.cache.format import SCHEMA, CacheMeta
from vfs.cache.reader import open_cache
from vfs.datasets import ImageItem, open_dataset

VARIANTS = [  # (codec, crc32c, images per shard)
    ("none", True, 1024), ("lz4", True, 1024), ("zstd", True, 1024),
    ("lz4", False, 1024), ("lz4", True, 256), ("lz4", True, 4096),
]


def real_features(count: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(count, 7, 7, 512) float16 channels-last features, (count,) labels, the images."""
    model = vfs.load_model("efficientnet_lite0")
    data = open_dataset(f"fashion-mnist:test[:{count}]")
    items = [data[i] for i in range(len(data))]
    extractor = vfs.FeatureExtractor(model.module, "bn2", preprocess=model.preprocess, batch_size=32)
    start = time.perf_counter()
    features = extractor([item.image for item in items])[:, :512]  # (count, 512, 7, 7)
    seconds = time.perf_counter() - start
    print(f"extracted {count} real feature maps in {seconds:.1f} s ({count / seconds:.1f} images/s, 224 px, bn2)")
    stored = features.to(torch.float16).permute(0, 2, 3, 1).contiguous().numpy()  # (count, 7, 7, 512)
    return stored, np.array([item.label for item in items]), items


def write(out: Path, real: np.ndarray, labels: np.ndarray, items: list, *, images: int, codec: str,
          checksum: bool, shard: int) -> float:
    """Write a full cache of `images` tiled real features; return seconds."""
    shutil.rmtree(out, ignore_errors=True)
    height, width, channels = real.shape[1:]
    meta = CacheMeta(schema=SCHEMA, model="efficientnet_lite0", weights_id="bench", layer="bn2[:512]",
                     preprocess={"size": 256, "crop": 224}, input_size=224, grid=(height, width),
                     channels=channels, dtype="float16", count=images, shard_size=shard, batch_size=32, codec=codec,
                     checksum=checksum, thumbnail=28, dataset=f"fashion-mnist tiled x{images // len(real)}",
                     dataset_fingerprint="bench", label_names=tuple("0123456789"),
                     arrays=("features", "thumbnails", "sq_norms", "labels", "image_sizes", "ids"),
                     versions=_versions(), created="", finished=None, status="building")
    thumbs = np.stack([np.asarray(item.image) for item in items])  # (R, 28, 28, 3)
    start = time.perf_counter()
    with zarr.config.set({"array.write_empty_chunks": True}):
        group, meta = _open_or_create(out, meta, overwrite=True)
        for block in range(meta.blocks):
            rows = np.arange(block * shard, min(images, (block + 1) * shard)) % len(real)
            block_items = [ImageItem(items[r].image, int(labels[r]), f"{i}") for i, r in enumerate(rows)]
            _write_block(group, meta, block, block_items, torch.from_numpy(real[rows]), thumbs[rows])
        _finish(group, meta)
    return time.perf_counter() - start


def disk(out: Path, name: str = "") -> tuple[int, int]:
    files = [p for p in (out / name).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def queries(cache, real: np.ndarray) -> dict[str, tuple]:
    """Top 20 for a 3x3 window and the full mask: (matches, seconds first, seconds repeat)."""
    query = torch.from_numpy(real[3].astype(np.float32)).permute(2, 0, 1)  # (C, H, W)
    small = np.zeros((7, 7), np.float32)
    small[2:5, 1:4] = 1
    out = {}
    for name, weights in (("3x3", small), ("7x7", np.ones((7, 7), np.float32))):
        first, t1 = timed(lambda weights=weights: vfs.search(query, weights, cache, k=20))
        _, t2 = timed(lambda weights=weights: vfs.search(query, weights, cache, k=20))
        out[name] = (first, t1, t2)
    return out


class ContiguousNCHW:
    """The reference tool calls `len()`, slices `[i:i+500]` and needs contiguous (n, C, H, W) blocks (it
    uses `.view`): wrap a channels-last zarr array, or a FeatureCache, to give it that."""

    def __init__(self, source, *, channels_last: bool):
        self.source, self.channels_last = source, channels_last

    def __len__(self) -> int:
        return self.source.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        block = np.asarray(self.source[index])
        return np.ascontiguousarray(block.transpose(0, 3, 1, 2) if self.channels_last else block)  # (n, C, H, W)


def reference(source, real: np.ndarray) -> tuple[np.ndarray, float]:
    """Top-20 scores of the reference tool for the 3x3 window, and its seconds."""
    import importlib.util
    spec = importlib.util.find_spec("visualfeaturesearch")  # located only: its __init__ needs cv2 and widgets
    path = Path(spec.submodule_search_locations[0]) / "searchtool.py"
    module_spec = importlib.util.spec_from_file_location("vfs_reference_searchtool", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    CachedSearchTool = module.CachedSearchTool
    tool = CachedSearchTool(None, source, "cpu", batch_size=500)
    tool._query_features = torch.from_numpy(real[3].astype(np.float32)).permute(2, 0, 1)[None]  # (1, C, H, W)
    mask = np.zeros((7, 7), np.float32)
    mask[2:5, 1:4] = 1
    (scores, _, _), seconds = timed(lambda: tool.compute(mask))
    return torch.topk(scores, 20).values.numpy(), seconds


def loaders(count: int, out: Path) -> None:
    """Decode + preprocess overlapped with the model: the builder's thread vs none vs a DataLoader worker."""
    from torch.utils.data import DataLoader

    from vfs.cache.build import build_cache

    model = vfs.load_model("efficientnet_lite0")
    spec, layer = f"fashion-mnist:test[:{count}]", "blocks.4"
    data = open_dataset(spec)
    preprocess = vfs.Preprocess(112, 112, model.preprocess.mean, model.preprocess.std, model.preprocess.interpolation)
    extractor = vfs.FeatureExtractor(model.module, layer, batch_size=32)
    extractor(preprocess([data[0].image]))  # warm up

    def serial() -> None:
        for first in range(0, count, 32):
            extractor(preprocess([data[i].image for i in range(first, min(count, first + 32))]))

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return count

        def __getitem__(self, index: int) -> torch.Tensor:
            return preprocess([data[index].image])[0]  # (3, 112, 112)

    def worker() -> None:
        for batch in DataLoader(Images(), batch_size=32, num_workers=1):
            extractor(batch)

    def builder() -> None:
        shutil.rmtree(out, ignore_errors=True)
        build_cache(model, layer, spec, out, input_size=112, resize=112, progress=False)

    for name, run in (("no overlap (decode, then model)", serial), ("DataLoader, 1 worker process", worker),
                      ("build_cache (loader thread, writes included)", builder)):
        _, seconds = timed(run)
        print(f"   {name:<46} {count / seconds:6.1f} images/s")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--real", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vfs-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the caches written")
    parser.add_argument("--loaders", type=int, default=1024, help="images for the loader comparison (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.loaders:
        print(f"Fashion-MNIST at 112 px to blocks.4, {args.loaders} images, batch 32, 2 torch threads:")
        loaders(args.loaders, args.out / "loaders")
    real, labels, items = real_features(args.real)
    queries(torch.from_numpy(real).permute(0, 3, 1, 2), real)  # compile/warm the search kernels first
    raw = args.images * real[0].nbytes
    print(f"\n{args.images} images x {real.shape[3]}x{real.shape[1]}x{real.shape[2]} float16 = {raw / 1e9:.2f} GB raw")
    print(f"{'codec':<6}{'crc':<5}{'shard':>6}{'write s':>9}{'MB/s':>7}{'img/s':>8}{'features MB':>13}{'ratio':>7}"
          f"{'files':>7}{'open RAM s':>12}{'3x3 s':>7}{'again':>7}{'7x7 s':>7}{'stream open':>13}"
          f"{'stream 3x3':>12}{'again':>7}")
    reference_top = None
    for codec, checksum, shard in VARIANTS:
        out = args.out / f"{codec}-{'crc' if checksum else 'nocrc'}-{shard}"
        seconds = write(out, real, labels, items, images=args.images, codec=codec, checksum=checksum, shard=shard)
        size, _ = disk(out, "features")
        _, files = disk(out)
        loaded, open_ram = timed(lambda out=out: open_cache(out, in_memory=True))
        in_ram = queries(loaded, real)
        del loaded
        streamed, open_stream = timed(lambda out=out: open_cache(out, in_memory=False))
        small, first, again = queries(streamed, real)["3x3"]
        assert [m.index for m in small] == [m.index for m in in_ram["3x3"][0]]  # same answer either way
        print(f"{codec:<6}{'yes' if checksum else 'no':<5}{shard:>6}{seconds:>9.1f}{raw / seconds / 1e6:>7.0f}"
              f"{args.images / seconds:>8.0f}{size / 1e6:>13.0f}{raw / size:>7.2f}{files:>7}{open_ram:>12.1f}"
              f"{in_ram['3x3'][1]:>7.2f}{in_ram['3x3'][2]:>7.2f}{in_ram['7x7'][2]:>7.2f}{open_stream:>13.2f}"
              f"{first:>12.1f}{again:>7.1f}", flush=True)
        if reference_top is None:  # the reference tool, once, on this first variant's Zarr data
            ours = np.array([m.score for m in in_ram["3x3"][0]])
            top, ref_zarr = reference(ContiguousNCHW(zarr.open_group(out, mode="r")["features"], channels_last=True),
                                       real)
            gap = float(np.abs(np.sort(top)[::-1] - ours).max())
            print(f"   reference visualfeaturesearch CachedSearchTool, 3x3 mask: {ref_zarr:.1f} s over the Zarr "
                  f"array (vfs: {in_ram['3x3'][2]:.2f} s in RAM, {again:.1f} s streamed); top-20 scores differ "
                  f"by at most {gap:.1e}")
            reference_top = top
        if not args.keep:
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
