"""Time one `vfs.search` per mask shape over every kind of source, against one plain read of the features.

    flock -x /tmp/vfs-heavy.lock python bench/search.py [--n 50000] [--repeats 3] [--reference]

Sources, all N x 512 x 7 x 7 in the same run (one dtype in memory at a time, at most 5 GB float32):

- tensor / numpy, float16 and float32, plain contiguous (N, C, H, W): what an extractor returns;
- zarr: the float16 array on local disk (chunks of 500 images, uncompressed, warm page cache);
- prepared: `vfs.prepare(features)` (float16, a copy) and `vfs.prepare(features, in_place=True)`
  (float32, no copy), with the seconds and peak-RSS growth of preparing;
- cache in RAM: channels-last numpy arrays plus sq_norms, sliced as `FeatureCache.load()` serves them.

Each cell is the median of --repeats searches (k=10) and, in brackets, its ratio to one plain read of
the same bytes (a torch sum in the source's dtype). Per mask the table also gives the multiply-adds
per stored value an exact search must do (cells x window offsets / H x W) and the time those take at
this machine's float32 GEMM rate (measured in the same run): where that floor nears the read, the
arithmetic, not memory, bounds the mask. The features are seeded post-ReLU-like random values.
--reference also times `visualfeaturesearch==1.0.0` on the first --ref-n images (scaled to N).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# On a shared 2-core machine, OpenMP threads that spin while waiting for a descheduled partner burn
# the other job's time and ours; waiting passively keeps the timings sane. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zarr  # noqa: E402

from bench.timing import median  # noqa: E402
from vfs.retrieval.prepared import prepare  # noqa: E402
from vfs.retrieval.window import search  # noqa: E402

MASKS = ("full 7x7", "3x3", "2x2", "one cell", "L-shaped blob")
CHANNELS, GRID = 512, 7


class CacheInRam:
    """Channels-last numpy storage (N, H, W, C) and sq_norms (N, H, W), served as `FeatureCache` does."""

    def __init__(self, stored: np.ndarray, sq_norms: np.ndarray):
        self.stored, self.sq_norms = stored, sq_norms
        count, height, width, channels = stored.shape
        self.shape = (count, channels, height, width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self.stored[index].transpose(0, 3, 1, 2)  # (n, C, H, W) view


def make_features(n: int, *, dtype: torch.dtype) -> torch.Tensor:
    """Seeded post-ReLU-like features (n, C, H, W), contiguous, generated in blocks to bound the peak."""
    generator = torch.Generator().manual_seed(0)
    out = torch.empty(n, CHANNELS, GRID, GRID, dtype=dtype)
    for start in range(0, n, 1000):
        block = torch.randn(min(1000, n - start), CHANNELS, GRID, GRID, generator=generator)  # (b, C, H, W)
        out[start:start + len(block)] = block.relu_()
    return out


def make_weights(name: str, grid: int) -> np.ndarray:
    weights = np.zeros((grid, grid), np.float32)
    middle = grid // 2
    if name == "full 7x7":
        weights[:] = 1
    elif name == "3x3":
        weights[middle - 1:middle + 2, middle - 1:middle + 2] = 1
    elif name == "2x2":
        weights[middle:middle + 2, middle:middle + 2] = 1
    elif name == "one cell":
        weights[middle, middle] = 1
    elif name == "L-shaped blob":
        weights[1:5, 1] = 1
        weights[4, 1:4] = 1
        weights[3, 2] = 1
    return weights


def multiply_adds_per_value(weights: np.ndarray) -> float:
    """cells x window offsets / (H x W): the multiply-adds an exact search does per stored value."""
    rows, cols = np.nonzero(weights)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    offsets = (weights.shape[0] - height + 1) * (weights.shape[1] - width + 1)
    return len(rows) * offsets / weights.size


def rss_gb() -> tuple[float, float]:
    """(current, peak since the last reset) resident memory of this process, in GB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1e6, int(fields["VmHWM"].split()[0]) / 1e6


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def gemm_rate() -> float:
    """Multiply-adds per second of a float32 2048^3 matmul here (the best the arithmetic can do)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds, _ = median(lambda: a @ b, 3, warm_up=True)
    return 2048**3 / seconds


class Table:
    """Seconds per query, per mask and source; printed as it fills."""

    def __init__(self, args, query: torch.Tensor, reads: dict[str, float]):
        self.args, self.query, self.reads = args, query, reads
        self.rows: dict[str, dict[str, str]] = {name: {} for name in MASKS}
        self.tops: dict[str, list] = {}

    def run(self, label: str, source, dtype: str) -> None:
        read = self.reads[dtype]
        for i, name in enumerate(MASKS):
            weights = make_weights(name, GRID)
            seconds, matches = median(lambda weights=weights: search(self.query, weights, source, k=self.args.k),
                                      self.args.repeats, warm_up=i == 0)
            self.rows[name][label] = f"{seconds:.3f} ({seconds / read:.1f}x)"
            top = [(m.index, m.row, m.col) for m in matches]
            same = self.tops.setdefault(f"{name} {dtype}", top) == top
            print(f"  {label:<22} {name:<14} {seconds:7.3f} s  {seconds / read:5.2f}x read  "
                  f"top-{self.args.k} {'same as the first source' if same else 'DIFFERS from the first source'}",
                  flush=True)

    def print(self, rate: float) -> None:
        labels = list(self.rows[MASKS[0]])
        print(f"\nseconds per query (ratio to one read: float16 {self.reads['float16']:.3f} s, "
              f"float32 {self.reads['float32']:.3f} s); multiply-adds at {rate / 1e9:.0f} G/s (float32 GEMM here)")
        print("| mask | MACs/value | MAC floor (s) | " + " | ".join(labels) + " |")
        print("|---" * (len(labels) + 3) + "|")
        for name in MASKS:
            weights = make_weights(name, GRID)
            macs = multiply_adds_per_value(weights)
            floor = macs * self.args.n * CHANNELS * GRID * GRID / rate
            print(f"| {name} | {macs:.1f} | {floor:.2f} | " + " | ".join(self.rows[name][lb] for lb in labels) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zarr-dir", type=Path, default=Path("/tmp/vfs-bench-search-zarr"))
    parser.add_argument("--reference", action="store_true", help="also time visualfeaturesearch==1.0.0")
    parser.add_argument("--ref-n", type=int, default=5_000, help="images given to the slow reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.n} x {CHANNELS} x {GRID} x {GRID}; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rate = gemm_rate()

    features = make_features(args.n, dtype=torch.float16)  # (N, C, H, W) contiguous
    reads = {"float16": median(lambda: features.sum(), args.repeats, warm_up=True)[0]}
    query = features[17].float()  # (C, H, W)
    table = Table(args, query, reads)
    print(f"float16: {features.numel() * 2 / 1e9:.2f} GB, one read {reads['float16']:.3f} s", flush=True)
    table.run("tensor f16 NCHW", features, "float16")
    table.run("numpy f16 NCHW", features.numpy(), "float16")

    shutil.rmtree(args.zarr_dir, ignore_errors=True)
    array = zarr.create_array(args.zarr_dir, shape=tuple(features.shape), dtype="float16",
                              chunks=(500, CHANNELS, GRID, GRID), compressors=None)
    for start in range(0, args.n, 5000):
        array[start:start + 5000] = features[start:start + 5000].numpy()
    table.run("zarr f16 (disk)", zarr.open_array(args.zarr_dir, mode="r"), "float16")
    shutil.rmtree(args.zarr_dir, ignore_errors=True)

    reset_peak()
    before, _ = rss_gb()
    start = time.perf_counter()
    prepared = prepare(features)
    seconds = time.perf_counter() - start
    print(f"vfs.prepare(float16 tensor): {seconds:.1f} s, peak RSS +{rss_gb()[1] - before:.2f} GB "
          f"(the copy is {prepared.nbytes / 1e9:.2f} GB)", flush=True)
    table.run("prepared f16 (copy)", prepared, "float16")
    table.run("cache in RAM f16", CacheInRam(prepared.stored.numpy(), prepared.sq_norms.numpy()), "float16")
    if args.reference:
        reference(args, features, query)
    del features, prepared, array
    gc.collect()

    features = make_features(args.n, dtype=torch.float32)  # (N, C, H, W) contiguous, same seed
    reads["float32"] = median(lambda: features.sum(), args.repeats, warm_up=True)[0]
    print(f"float32: {features.numel() * 4 / 1e9:.2f} GB, one read {reads['float32']:.3f} s", flush=True)
    table.run("tensor f32 NCHW", features, "float32")
    table.run("numpy f32 NCHW", features.numpy(), "float32")
    reset_peak()
    before, _ = rss_gb()
    start = time.perf_counter()
    prepared = prepare(features, in_place=True)
    seconds = time.perf_counter() - start
    print(f"vfs.prepare(float32 tensor, in_place=True): {seconds:.1f} s, peak RSS +{rss_gb()[1] - before:.2f} GB "
          f"(features {features.numel() * 4 / 1e9:.2f} GB)", flush=True)
    table.run("prepared f32 (in place)", prepared, "float32")
    table.print(rate)


def reference(args, features: torch.Tensor, query: torch.Tensor) -> None:
    """`visualfeaturesearch`'s `CachedSearchTool` on the first --ref-n images, times scaled to N."""
    spec = importlib.util.find_spec("visualfeaturesearch")
    if spec is None or not spec.submodule_search_locations:
        print("reference: pip install --no-deps visualfeaturesearch==1.0.0 to compare with it")
        return
    path = Path(list(spec.submodule_search_locations)[0]) / "searchtool.py"  # its __init__ imports cv2
    module_spec = importlib.util.spec_from_file_location("visualfeaturesearch_searchtool", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    ref_n = min(args.ref_n, args.n)
    tool = module.CachedSearchTool(lambda x: x, np.ascontiguousarray(features[:ref_n].numpy()), "cpu")
    tool.set_input_image(query)
    for name in MASKS:
        seconds, _ = median(lambda name=name: tool.compute(make_weights(name, GRID)), 1, warm_up=False)
        print(f"  reference (x{args.n / ref_n:.3g} from {ref_n})  {name:<14} {seconds * args.n / ref_n:7.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
