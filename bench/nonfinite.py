"""What the non-finite check costs a search over plain arrays (no `sq_norms`: one more read per block).

    flock -x /tmp/vfs-heavy.lock python3 bench/nonfinite.py [--images 10000]

Times `vfs.search` over (N, 512, 7, 7) float32 and float16 numpy arrays (contiguous and channels-last)
for a 3x3 and a full 7x7 mask, with the check as shipped and with it reduced to the scores' own NaNs
(the cheapest check, which misses float16 inf and NaN windows the fused kernel scores 0), in the same
run. Best of 3 after a warm-up; prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vfs
from bench.timing import best
from vfs.retrieval import checks


def scores_only(features, norms, scores):
    return (~torch.isfinite(scores).all(dim=1)).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.images, 7, 7, 512), dtype=np.float32)  # (N, H, W, C)
    masks = {"3x3": np.zeros((7, 7), np.float32), "7x7": np.ones((7, 7), np.float32)}
    masks["3x3"][2:5, 2:5] = 1
    shipped = checks.nonfinite_rows
    for dtype in (np.float32, np.float16):
        last = base.astype(dtype)
        layouts = {"channels-last": last.transpose(0, 3, 1, 2),
                   "contiguous": np.ascontiguousarray(last.transpose(0, 3, 1, 2))}
        for layout, source in layouts.items():
            query = source[0].astype(np.float32)
            for name, weights in masks.items():
                def run(weights=weights, source=source, query=query):
                    return vfs.search(query, weights, source, k=10)

                checks.nonfinite_rows = scores_only
                cheap = best(run, warm_up=True)
                checks.nonfinite_rows = shipped
                checked = best(run, warm_up=True)
                print(f"{np.dtype(dtype).name:<8} {layout:<13} mask {name}: scores only {cheap:.3f} s, "
                      f"shipped check {checked:.3f} s   (ratio {checked / cheap:.2f})")


if __name__ == "__main__":
    main()
