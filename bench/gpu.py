"""The GPU check, in one script that fits in about 4 minutes on one GPU:

    python bench/gpu.py [--n 50000] [--max-n 0] [--skip-tests] [--seconds 10]

1. runs the CUDA tests (the ones that skip on a machine without a GPU);
2. search time per mask with the features held in GPU memory (float16, channels-last with sq_norms,
   the math in float32) at --n images and at the largest N the free device memory holds (--max-n
   to cap it), with one plain read of the same bytes for scale;
3. CPU-vs-GPU equality: the same query per mask on both, top-10 (index, row, col) and max score gap;
4. feature extraction images/s at 224 px for efficientnet_lite0 (timm `tf_efficientnet_lite0`) and
   resnet50 (torchvision), random weights, float16 autocast, pinned batches.

Features are seeded post-ReLU-like random values of 512 x 7 x 7, generated on the device.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.search import MASKS, make_weights  # noqa: E402
from bench.timing import median  # noqa: E402
from vfs.retrieval.prepared import PreparedSource  # noqa: E402
from vfs.retrieval.window import best_windows, search  # noqa: E402

CHANNELS, GRID = 512, 7
CUDA_TESTS = [
    "tests/test_search.py::test_cuda_equals_cpu",
    "tests/test_prepared.py::test_prepared_source_on_the_gpu_equals_the_cpu",
    "tests/test_gpu_wiring.py::test_app_search_on_cuda_equals_cpu",
    "tests/test_features.py::test_extraction_on_cuda_in_mixed_precision_matches_the_cpu",
]
HEADROOM = 6 << 30  # device bytes left free for the search's float32 chunk buffers and scores
IMAGE_BYTES = CHANNELS * GRID * GRID * 2 + GRID * GRID * 4  # float16 features + float32 sq_norms


def synchronized(fn):
    def run():
        result = fn()
        torch.cuda.synchronize()
        return result
    return run


def device_source(n: int, device: torch.device) -> PreparedSource:
    """Seeded features made on the device in blocks: (N, H, W, C) float16 and sq_norms (N, H, W)."""
    generator = torch.Generator(device=device).manual_seed(0)
    stored = torch.empty(n, GRID, GRID, CHANNELS, dtype=torch.float16, device=device)
    norms = torch.empty(n, GRID, GRID, device=device)
    for start in range(0, n, 20_000):
        block = torch.randn(min(20_000, n - start), GRID, GRID, CHANNELS, generator=generator,
                            device=device).relu_()  # (b, H, W, C)
        stored[start:start + len(block)] = block
        norms[start:start + len(block)] = stored[start:start + len(block)].float().pow(2).sum(dim=3)  # (b, H, W)
    torch.cuda.synchronize()
    return PreparedSource(stored, norms)


def search_times(source: PreparedSource, repeats: int) -> None:
    query = source[17].float()  # (C, H, W) on the device
    read = median(synchronized(lambda: source.stored.sum()), repeats)[0]  # warmed up: plans, buffers, cuBLAS
    n = source.shape[0]
    print(f"\nsearch over {n:,} images ({source.nbytes / 1e9:.1f} GB on the device), one read {read * 1e3:.1f} ms")
    print("| mask | seconds per query | ratio to one read |\n|---|---|---|")
    for name in MASKS:
        weights = make_weights(name, GRID)
        seconds = median(lambda weights=weights: search(query, weights, source, k=10), repeats)[0]
        print(f"| {name} | {seconds:.3f} | {seconds / read:.1f}x |", flush=True)


def equality(n: int, device: torch.device) -> None:
    """The same features searched on the CPU and on the GPU: same top 10, scores to float32 rounding."""
    on_device = device_source(n, device)
    on_cpu = PreparedSource(on_device.stored.cpu(), on_device.sq_norms.cpu())
    query = on_cpu[17].float()
    print(f"\nCPU vs GPU over {n:,} images\n| mask | top-10 same | max score gap |\n|---|---|---|")
    for name in MASKS:
        weights = make_weights(name, GRID)
        cpu = search(query, weights, on_cpu, k=10)
        gpu = search(query.to(device), weights, on_device, k=10)
        same = sum((a.index, a.row, a.col) == (b.index, b.row, b.col) for a, b in zip(cpu, gpu))
        gap = max(abs(a.score - b.score) for a, b in zip(cpu, gpu))
        best_cpu = best_windows(query, weights, on_cpu)
        best_gpu = best_windows(query.to(device), weights, on_device)
        gap = max(gap, float(np.abs(best_cpu.scores - best_gpu.scores).max()))
        print(f"| {name} | {same}/10 | {gap:.1e} |", flush=True)


def extraction(device: torch.device, seconds: float) -> None:
    import timm
    import torchvision

    from vfs.models.features import FeatureExtractor

    print("\nextraction at 224 px, random weights, batch 128, float16 autocast, pinned batches")
    print("| model | layer | images/s |\n|---|---|---|")
    models = [("efficientnet_lite0", lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False), "blocks.5"),
              ("resnet50", lambda: torchvision.models.resnet50(weights=None), "layer4")]
    batch = torch.rand(128, 3, 224, 224).pin_memory()  # (B, 3, H, W), preprocessed already
    for name, build, layer in models:
        module = build().eval().to(device, memory_format=torch.channels_last)
        extractor = FeatureExtractor(module, layer, device=device, batch_size=128)
        extractor(batch)  # warm up: cuDNN picks its algorithms
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            extractor(batch)
            count += len(batch)
        print(f"| {name} | {layer} | {count / (time.perf_counter() - start):.0f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--max-n", type=int, default=0, help="cap on the largest N (0: what memory holds)")
    parser.add_argument("--equal-n", type=int, default=20_000, help="images in the CPU-vs-GPU check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of extraction per model")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA GPU on this machine (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
              "nothing to measure; run this on a machine with one")
        return 0
    device = torch.device("cuda")
    properties = torch.cuda.get_device_properties(device)
    print(f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    started = time.perf_counter()
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS],
                               cwd=ROOT, capture_output=True, text=True)
        print(f"CUDA tests: {tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]}")
        if tests.returncode != 0:
            print(tests.stdout[-3000:])
    source = device_source(args.n, device)
    search_times(source, args.repeats)
    del source
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    largest = max(args.n, (free - HEADROOM) // IMAGE_BYTES)
    largest = min(largest, args.max_n) if args.max_n else largest
    source = device_source(int(largest), device)
    search_times(source, max(1, args.repeats // 2))
    del source
    torch.cuda.empty_cache()
    equality(args.equal_n, device)
    extraction(device, args.seconds)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
