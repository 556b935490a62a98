"""The cache's command-line commands: `python -m vfs index` (build or resume a cache, `build_cache`)
and `python -m vfs verify` (read a cache whole, `FeatureCache.verify`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from vfs.cache.build import build_cache
from vfs.cache.format import CODEC, CODECS, SHARD, THUMBNAIL
from vfs.cache.reader import open_cache
from vfs.errors import positive_int


def index_command(argv: list[str]) -> int:
    """`python -m vfs index [--model NAME | --module PKG.MOD:FACTORY] [--weights PATH] --layer LAYER --dataset SPEC
    --out PATH`: build or resume a cache."""
    from vfs.models.arguments import add_model_arguments, model_from_arguments

    parser = argparse.ArgumentParser(prog="python -m vfs index", description=index_command.__doc__)
    add_model_arguments(parser)
    parser.add_argument("--layer", required=True, help="layer name; `python -m vfs layers` lists them")
    parser.add_argument("--dataset", required=True,
                        help="dataset spec, e.g. fashion-mnist:test[:500], folder:PATH, hf:NAME_OR_PATH[:split]")
    parser.add_argument("--out", required=True, type=Path, help="cache folder (resumed if unfinished)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--input-size", type=positive_int, default=None, help="side the model sees (default: model's)")
    parser.add_argument("--resize", type=positive_int, default=None,
                        help="shorter side before the centre crop (default: the model's ratio)")
    parser.add_argument("--codec", default=CODEC, choices=CODECS)
    parser.add_argument("--shard-size", type=positive_int, default=SHARD, help=f"images per shard (default {SHARD})")
    parser.add_argument("--thumbnail", type=positive_int, default=THUMBNAIL,
                        help=f"thumbnail side in pixels (default {THUMBNAIL})")
    parser.add_argument("--no-checksum", dest="checksum", action="store_false",
                        help="no crc32c per chunk (damage is then found only by size and block digests)")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--device", default="cpu",
                        help="where the model runs: cpu (default) or cuda / cuda:N (float16 autocast)")
    parser.add_argument("--scheduler", default=os.environ.get("VFS_SCHEDULER") or None,
                        help="Dask scheduler address: build the shards on its workers (env VFS_SCHEDULER)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = build_cache(model_from_arguments(args), args.layer, args.dataset, args.out, dtype=args.dtype,
                       batch_size=args.batch_size, input_size=args.input_size, resize=args.resize,
                       codec=args.codec, shard_size=args.shard_size, thumbnail=args.thumbnail,
                       checksum=args.checksum, scheduler=args.scheduler, device=args.device)
    print(f"cache ready: {path}")
    return 0


def verify_command(argv: list[str]) -> int:
    """`python -m vfs verify PATH [PATH ...]`: read every block of each cache, checking sizes and checksums."""
    parser = argparse.ArgumentParser(prog="python -m vfs verify", description=verify_command.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="cache folders (as built by `python -m vfs index`)")
    args = parser.parse_args(argv)
    for path in args.paths:
        started = time.perf_counter()
        cache = open_cache(path, in_memory=False)  # an unfinished cache is refused here, with its resume command
        blocks = cache.verify()
        meta = cache.meta
        bound = "sizes, checksums and positions" if cache.positions_bound else "sizes and checksums"
        print(f"ok: {path}: {meta.count:,} images of {meta.dataset}, {meta.model} {meta.layer!r}, "
              f"{blocks} blocks read and checked ({bound}) in {time.perf_counter() - started:.1f} s")
        if not cache.positions_bound:
            print(f"note: {path} was built before block digests existed, so a block file copied over another "
                  "block of the same array cannot be detected; rebuild it to have every block tied to its "
                  "place", file=sys.stderr)
    return 0
