"""Many users searching at once: errors, latency and server memory for 1, 4 and 16 `gradio_client` users.

    flock -x /tmp/vfs-heavy.lock python bench/load.py [--cache-dir DIR] [--users 1 4 16] [--rounds 2]
        [--variant NAME=VALUE[,NAME=VALUE]]... [--profile DIR]

Builds (or reuses) the offline default caches under DIR (default: $VFS_CACHE_DIR or ~/.cache/vfs),
launches `python -m app` on them and, for each user count, starts that many clients (threads, each
its own `gradio_client.Client` and download folder) that wait on one barrier and then each run
`--rounds` searches of the Fashion-MNIST cache back to back: user u paints the same square on dataset
image u (mod --queries), sent as an upload. Every answer (gallery captions and the bytes of every
result image) is compared with the answer a single user got for the same query, measured first.

With `--variant`, one more server is started per variant, with those environment variables set
(e.g. `GRADIO_DEFAULT_CONCURRENCY_LIMIT=4`, `OMP_NUM_THREADS=1`), and each user count runs on every
server in turn: configurations compared under the same load on a shared machine. Every server's
single-user answers must equal the first's.

Prints, per server and user count: requests, errors (with the first few), answers that differ from
the single user's, p50/p95/max latency of one search as a client sees it, the server's peak resident
memory (sampled every 20 ms from /proc), the CPU seconds per search of the server and of the clients
(this process: on a 2-core machine the client threads compete with the server for the same cores),
and the load average. Then the server's own per-stage timings (its log lines "search handler: ..."),
so the time of a slow search can be split into queueing and work.

`--profile DIR` records the server with py-spy (`pip install py-spy`; not a dependency of the
project) while each user count runs: DIR/server<number>-<users>.txt holds its collapsed stacks (one
line per stack and its sample count, idle threads left out), to see where the server's time goes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from app_server import free_port, wait_ready  # noqa: E402 (after the path set-up)

from vfs.cache.defaults import default_root, ensure_default_caches  # noqa: E402

STAGES = re.compile(r"search handler: (?P<rest>.*)$")


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """The highest RSS of a process seen while the `with` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)  # sampling interval

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the clients)."""
    return sum(os.times()[:2])


def start_profile(pid: int, path: Path) -> subprocess.Popen | None:
    """py-spy recording process `pid` into `path` (collapsed stacks) until stopped; None without py-spy."""
    import shutil

    spy = shutil.which("py-spy")
    if spy is None:
        print("      py-spy is not installed (pip install py-spy): no profile")
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(timeout=60)


def query_argument(image_path: Path, layer_path: Path) -> dict:
    from gradio_client import handle_file

    return {"background": handle_file(str(image_path)), "layers": [handle_file(str(layer_path))],
            "composite": None, "id": None}


def write_queries(folder: Path, count: int, cache_key: str, cache_dir: Path) -> list[tuple[Path, Path]]:
    """PNG pairs (dataset image as displayed, a painted square as an RGBA layer) for `count` queries."""
    from app import handlers
    from app.library import CacheLibrary

    library = CacheLibrary(cache_dir, hub=False)
    library.refresh()
    pairs = []
    for number in range(count):
        image = handlers.display_image(library, cache_key, number)  # (H, W, 3)
        height, width = image.shape[:2]
        layer = np.zeros((height, width, 4), np.uint8)  # (H, W, 4)
        layer[height // 4 : height // 2, width // 4 : 3 * width // 4] = (255, 120, 0, 255)
        paths = folder / f"query{number}.png", folder / f"layer{number}.png"
        Image.fromarray(image).save(paths[0])
        Image.fromarray(layer).save(paths[1])
        pairs.append(paths)
    return pairs


def answer_of(result) -> tuple:
    """What a user sees: captions and a hash of every result image's bytes, and the summary's count."""
    gallery, summary = result[0], result[1]
    pictures = tuple(hashlib.sha1(Path(item["image"]).read_bytes()).hexdigest() for item in gallery)
    captions = tuple(item["caption"] for item in gallery)
    return captions, pictures, summary.split(" · ")[0]


def search_once(client, cache_key: str, pair, k: int):
    return client.predict(cache_key, query_argument(*pair), k, True, "no limit", "all labels",
                          api_name="/search")


def client_options() -> dict:
    """`gradio_client.Client` options for every client: one TLS context made once and shared.

    `gradio_client` opens a new httpx connection for every file it uploads or downloads (13 per
    search here), and httpx builds a TLS context for each by reading certifi's CA bundle: ~50 ms of
    CPU each, 0.78 s of client CPU per search in all (py-spy), on the same 2 cores as the server.
    The server is plain http on 127.0.0.1, so no certificate is ever checked; handing httpx a ready
    context leaves the clients' CPU to what a browser on another machine would do.
    """
    import ssl

    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return {"httpx_kwargs": {"timeout": 120}, "ssl_verify": _TLS}  # httpx takes a context for `verify`


_TLS = None


def run_users(url: str, users: int, rounds: int, pairs, cache_key: str, k: int, downloads: Path):
    """`users` clients at once, `rounds` searches each; returns (latencies, errors, answers by query)."""
    from gradio_client import Client

    clients = []
    for user in range(users):
        folder = downloads / f"u{users}-{user}"
        folder.mkdir(parents=True, exist_ok=True)
        clients.append(Client(url, verbose=False, download_files=str(folder), **client_options()))
    barrier = threading.Barrier(users)
    latencies, errors, answers = [], [], []
    lock = threading.Lock()

    def user_loop(user: int):
        pair_number = user % len(pairs)
        barrier.wait()
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                result = search_once(clients[user], cache_key, pairs[pair_number], k)
                answer = answer_of(result)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    answers.append((pair_number, answer))
            except Exception as error:  # noqa: BLE001 -- every failure is counted and shown
                with lock:
                    errors.append(f"{type(error).__name__}: {error}"[:300])

    threads = [threading.Thread(target=user_loop, args=(user,)) for user in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return latencies, errors, answers


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def start_server(root: Path, log_path: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`python -m app` over the caches under `root` with `extra_env` set; returns (process, URL) once it serves."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", "VFS_HUB": "0", **extra_env}
    for attempt in range(3):  # gradio gives up at start when its own 3 s check of "/" times out (busy machine)
        port = free_port()
        command = [sys.executable, "-m", "app", "--port", str(port), "--cache-dir", str(root), "--no-default",
                   "--no-hub"]
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "w") as log:
            server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, server, timeout=600)
            while server.poll() is None and "To create a public link" not in log_path.read_text():
                time.sleep(0.5)  # gradio prints that once its own start-up check of "/" passed
            if server.poll() is None:
                return server, url
        except (RuntimeError, TimeoutError):
            server.kill()
            server.wait()
        print(f"the server did not start (attempt {attempt + 1}); see {log_path}")
    raise RuntimeError(f"the server did not start; see {log_path}")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"NAME=VALUE[,NAME=VALUE...]" -> (the text as the variant's name, its environment)."""
    env = {}
    for part in text.split(","):
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise SystemExit(f"--variant {text!r}: write NAME=VALUE[,NAME=VALUE...], e.g. OMP_NUM_THREADS=1")
        env[name.strip()] = value.strip()
    return text, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2, help="searches per user, back to back")
    parser.add_argument("--queries", type=int, default=16, help="distinct queries, user u asks query u mod this")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--profile", type=Path, default=None, help="folder for py-spy profiles of the server")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also measure a server started with these environment variables (repeatable), "
                             "e.g. GRADIO_DEFAULT_CONCURRENCY_LIMIT=4 or OMP_NUM_THREADS=1; each user count "
                             "runs on every server in turn, so all of them are measured under the same load")
    args = parser.parse_args()
    root = args.cache_dir or default_root()
    paths = ensure_default_caches(root)
    cache_key = paths["fashion-mnist"].name
    work = Path(tempfile.mkdtemp(prefix="vfs-load-"))
    pairs = write_queries(work, args.queries, cache_key, root)
    variants = [("as shipped", {}), *args.variant]
    servers: list[tuple[str, subprocess.Popen, str, Path]] = []
    try:
        for number, (name, extra_env) in enumerate(variants):
            log_path = work / f"server{number}.log"
            server, url = start_server(root, log_path, extra_env)
            servers.append((name, server, url, log_path))
            print(f"server {number} ({name}) up: pid {server.pid}, idle RSS {rss_mb(server.pid):.0f} MB; "
                  f"cache {cache_key}; load average {os.getloadavg()[0]:.1f} (2 cores)")
        # reference: one user, each query alone, on every server (also warms each: model, kernels, cache
        # in RAM); every server must give the first one's answers
        from gradio_client import Client

        reference: dict[int, tuple] = {}
        for number, (name, _, url, _) in enumerate(servers):
            alone = Client(url, verbose=False, download_files=str(work / f"ref{number}"), **client_options())
            for query, pair in enumerate(pairs):
                try:
                    answer = answer_of(search_once(alone, cache_key, pair, args.k))
                except Exception as error:  # noqa: BLE001 -- shown, and the run stops
                    print(f"the single-user reference on server {number} failed: {type(error).__name__}: "
                          f"{error}"[:300])
                    return 1
                if reference.setdefault(query, answer) != answer:
                    print(f"server {number} ({name}) answers query {query} differently from server 0")
                    return 1
            alone.close()
        print(f"{'server':>6} {'users':>5} {'requests':>8} {'errors':>6} {'differ':>6} {'p50 s':>7} {'p95 s':>7} "
              f"{'max s':>7} {'peak MB':>8} {'wall s':>7} {'server CPU/search':>17} {'client CPU/search':>17} "
              f"{'load':>5}")
        for users in args.users:
            for number, (_, server, url, log_path) in enumerate(servers):
                log_mark = log_path.stat().st_size
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile / f"server{number}-{users}.txt" if args.profile else None
                spy = start_profile(server.pid, profile) if profile else None
                start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server.pid), own_cpu_seconds()
                with PeakMemory(server.pid) as memory:
                    latencies, errors, answers = run_users(url, users, args.rounds, pairs, cache_key, args.k,
                                                           work / f"runs{number}")
                wall = time.perf_counter() - start
                server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, own_cpu_seconds() - client_cpu
                stop_profile(spy)
                requests = users * args.rounds
                differ = sum(answer != reference[query] for query, answer in answers)
                print(f"{number:>6} {users:>5} {requests:>8} {len(errors):>6} {differ:>6} "
                      f"{percentile(latencies, 50):>7.2f} {percentile(latencies, 95):>7.2f} "
                      f"{max(latencies, default=float('nan')):>7.2f} {memory.peak:>8.0f} {wall:>7.1f} "
                      f"{server_cpu / requests:>17.3f} {client_cpu / requests:>17.3f} {os.getloadavg()[0]:>5.1f}")
                for error in errors[:3]:
                    print(f"      error: {error}")
                with open(log_path) as handle:
                    handle.seek(log_mark)
                    stages = [m["rest"] for line in handle if (m := STAGES.search(line))]
                if stages:
                    print(f"      server {number}, last of {len(stages)}: {stages[-1]}")
        for number, (name, _, _, log_path) in enumerate(servers):
            print(f"server {number}: {name}; log {log_path}")
        print(f"load average now {os.getloadavg()[0]:.1f} (2 cores)")
    finally:
        for _, server, _, _ in servers:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
