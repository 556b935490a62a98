"""Time a masked-window search over N x 512 x 7 x 7 features against the reference package and a plain read.

    flock /tmp/vfs-heavy.lock python bench/search.py [--n 50000] [--dtype float16|float32] [--ref-n 5000]

For each mask shape it prints this project's time per query (median of --repeats), the time of
`visualfeaturesearch==1.0.0`'s `CachedSearchTool` on the same features (on the first --ref-n images,
scaled to N when --ref-n < N, and labelled so), their ratio, the ratio to one plain read of the
features (a torch sum, same dtype), and whether both return the same top matches.

The features are random post-ReLU-like values, seeded, stored channels-last with per-position
squared norms, as a `FeatureCache` holds them in RAM (--layout nchw / --no-sq-norms to change that).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# On a shared 2-core machine, OpenMP threads that spin while waiting for a descheduled partner burn
# the other job's time and ours; waiting passively keeps the timings sane. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vfs.retrieval.kernels as kernels  # noqa: E402
from vfs.retrieval.window import search  # noqa: E402

MASKS = ("full 7x7", "3x3", "2x2", "one cell", "L-shaped blob")


class Features:
    """A source like a FeatureCache loaded in RAM: (N, C, H, W) slices, optional sq_norms, a length."""

    def __init__(self, features: torch.Tensor, *, sq_norms: bool):
        self.features = features
        self.shape = tuple(features.shape)
        if sq_norms:
            self.sq_norms = torch.cat([(block.float() ** 2).sum(dim=1) for block in features.split(1000)])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self.features[index]


def make_features(n: int, *, channels: int, grid: int, dtype: torch.dtype,
                  channels_last: bool) -> torch.Tensor:
    """Seeded post-ReLU-like features (n, C, H, W), generated in blocks to bound the peak memory."""
    generator = torch.Generator().manual_seed(0)
    out = torch.empty(n, channels, grid, grid, dtype=dtype,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for start in range(0, n, 1000):
        block = torch.randn(min(1000, n - start), channels, grid, grid, generator=generator)  # (b, C, H, W)
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


def load_reference():
    """`visualfeaturesearch.searchtool`, loaded from its file (the package's __init__ imports cv2)."""
    spec = importlib.util.find_spec("visualfeaturesearch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps visualfeaturesearch==1.0.0 to compare with the reference")
    path = Path(list(spec.submodule_search_locations)[0]) / "searchtool.py"
    module_spec = importlib.util.spec_from_file_location("visualfeaturesearch_searchtool", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int, *, warm_up: bool = True):
    """Median seconds of `repeats` calls (after one untimed call: numba compiles or loads its cache)."""
    if warm_up:
        fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def reference_top(tool, weights: np.ndarray, k: int):
    sims, xs, ys = tool.compute(weights)
    order = torch.argsort(sims, descending=True, stable=True)[:k]
    return [(int(i), int(ys[i]), int(xs[i]), float(sims[i])) for i in order]


def agreement(ours, theirs) -> str:
    same = sum((m.index, m.row, m.col) == (i, r, c) for m, (i, r, c, _) in zip(ours, theirs))
    gap = max(abs(m.score - s) for m, (*_, s) in zip(ours, theirs))
    return f"{same}/{len(theirs)} same (index,row,col), max score diff {gap:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--ref-n", type=int, default=5_000, help="images given to the slow reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    parser.add_argument("--no-sq-norms", action="store_true", help="make search compute the window norms")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ref_n = min(args.ref_n, args.n)

    start = time.perf_counter()
    channels_last = args.layout == "channels_last"
    features = make_features(args.n, channels=512, grid=7, dtype=dtype, channels_last=channels_last)
    source = Features(features, sq_norms=not args.no_sq_norms)
    print(f"{args.n} x 512 x 7 x 7 {args.dtype} {args.layout}, sq_norms={not args.no_sq_norms}, "
          f"{features.numel() * features.element_size() / 1e9:.2f} GB, "
          f"made in {time.perf_counter() - start:.0f} s; "
          f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load average {os.getloadavg()[0]:.1f}")
    read_s, _ = timed(lambda: features.sum(), args.repeats)
    print(f"plain read (torch sum, {args.dtype}): {read_s:.3f} s; "
          f"numba kernel for small masks: {kernels.USE_NUMBA}")

    reference = load_reference()
    ref_features = np.ascontiguousarray(features[:ref_n].numpy() if args.layout == "nchw"
                                        else features[:ref_n].contiguous().numpy())  # (ref_n, C, H, W)
    tool = reference.CachedSearchTool(lambda x: x, ref_features, "cpu")
    query = features[17].float()  # (C, H, W)
    tool.set_input_image(query)
    scale = args.n / ref_n
    label = "reference" if ref_n == args.n else f"reference x{scale:.3g} (timed on {ref_n})"

    print(f"\ntimes per query: this project median of {args.repeats}, the reference one run")
    print(f"{'mask':<14} {'this (s)':>9} {'torch path':>10} {label:>32} {'ref/this':>9} {'this/read':>10}  "
          f"top-{args.k} agreement (on the first {ref_n})")
    for name in MASKS:
        weights = make_weights(name, 7)
        ours_s, ours = timed(lambda weights=weights: search(query, weights, source, k=args.k), args.repeats)
        torch_path = "same"
        if kernels.USE_NUMBA and (not weights.all() or dtype == torch.float16):  # numba ran: time torch too
            kernels.USE_NUMBA = False
            torch_s, torch_ours = timed(lambda weights=weights: search(query, weights, source, k=args.k), args.repeats)
            kernels.USE_NUMBA = True
            same = [(m.index, m.row, m.col) for m in ours] == [(m.index, m.row, m.col) for m in torch_ours]
            torch_path = f"{torch_s:.3f}{'' if same else '!'}"  # ! = the two paths disagree on the top k
        ref_s, theirs = timed(lambda weights=weights: reference_top(tool, weights, args.k), 1, warm_up=False)  # slow: one run
        ref_s *= scale
        ours_sub = search(query, weights, source, k=args.k, subset=np.arange(ref_n))
        print(f"{name:<14} {ours_s:>9.3f} {torch_path:>10} {ref_s:>32.2f} {ref_s / ours_s:>9.1f} "
              f"{ours_s / read_s:>10.2f}  "
              f"{agreement(ours_sub, theirs)}", flush=True)


if __name__ == "__main__":
    main()
