"""hub_caches end to end against tests/hub_server.py, a Hub-compatible server on 127.0.0.1.

The real client code runs (huggingface_hub's HfApi, hf_hub_download); only the server is local.
Oracles: a cache opened from the Hub reads and searches exactly like the local cache it was pushed
from; the server's request log shows which files were fetched; a file altered on the server, a
missing chunk, a wrong repo or revision, a 429 and a dead network each raise their own error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import vfs
from vfs.cache.build import build_cache
from vfs.errors import CacheIncompleteError, VFSError

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer

import hub_caches
from hub_caches import (
    CatalogError,
    HubOfflineError,
    HubServerError,
    RateLimitError,
    RemoteFileError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

SPEC, LAYER, SIZE, SHARD = "fashion-mnist:test[:64]", "blocks.3", 64, 16  # 4 blocks of 16 images
REPO = "vfs-test/fmnist"
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs `apt-get install dataset-fashion-mnist`")


@pytest.fixture(autouse=True)
def hf_env(tmp_path, monkeypatch):
    """Every test gets its own empty Hugging Face cache, online, anonymous."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HUB_CACHES_CATALOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def built(lite0, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "fmnist"
    return build_cache(lite0, LAYER, SPEC, out, input_size=SIZE, shard_size=SHARD, batch_size=16,
                       progress=False)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One server for the tests that only read; tests that damage the server start their own."""
    with HubServer(tmp_path_factory.mktemp("hub"), page_size=7) as server:  # small pages: exercise paging
        yield server


@pytest.fixture(scope="module")
def pushed(built, hub):
    with pytest.MonkeyPatch.context() as patch:  # inner chunks of 4 images, so a block holds 4 chunks
        patch.setattr("hub_caches.encode.CHUNK_BYTES", 4 * 4 * 4 * 80 * 2)
        return hub_caches.push_cache(built, REPO, tag="v1", endpoint=hub.endpoint, token=False, license="mit")


def _open(hub, revision="v1", **options):
    return hub_caches.open(REPO, revision=revision, endpoint=hub.endpoint, token=False, **options)


def _store(hub, revision="v1", **options):
    return hub_caches.open_store(REPO, revision=revision, endpoint=hub.endpoint, token=False, **options)


def test_opened_cache_equals_local_and_searches_the_same(built, hub, pushed):
    local = vfs.open_cache(built, in_memory=True)
    remote = _open(hub)
    assert remote.shape == local.shape and remote.meta.identity() | {"codec": "lz4"} == local.meta.identity()
    np.testing.assert_array_equal(remote[0:64], local[0:64])
    np.testing.assert_array_equal(np.asarray(remote.sq_norms[0:64]), np.asarray(local.sq_norms[0:64]))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.ids == local.ids and remote.label_names == local.label_names
    np.testing.assert_array_equal(np.asarray(remote.thumbnail(5)), np.asarray(local.thumbnail(5)))
    weights = np.zeros(local.shape[-2:], dtype=np.float32)
    weights[1:3, 1:3] = 1
    expected = vfs.search(local[3], weights, local, k=10)
    assert vfs.search(remote[3], weights, remote, k=10) == expected
    assert vfs.search(local[3], weights, _open(hub, in_memory=True), k=10) == expected


def test_a_query_downloads_only_the_blocks_it_touches(built, hub, pushed):
    store = _store(hub, revision=pushed.revision)  # a sha: no request to resolve it
    cache = vfs.open_cache(store, in_memory=False)
    hub.stats.reset()
    query = cache[20]  # image 20 lives in block 1
    weights = np.ones(cache.shape[-2:], dtype=np.float32)
    matches = vfs.search(query, weights, cache, k=3, subset=np.arange(16, 32))
    assert sorted(hub.stats.downloads()) == ["cache.zarr/features/c/1/0/0/0", "cache.zarr/sq_norms/c/1/0/0"]
    assert len(hub.stats.requests) == 4  # a HEAD and a GET per file
    assert matches[0].index == 20 and matches[0].score == pytest.approx(1, abs=1e-3)
    hub.stats.reset()
    cache[21]  # same block, already on disk: no request
    assert hub.stats.requests == []


def test_full_scan_fetches_each_block_once_and_prefetches(built, hub, pushed):
    store = _store(hub, revision=pushed.revision, prefetch=2)
    cache = vfs.open_cache(store, in_memory=False)
    hub.stats.reset()
    cache[0:SHARD]
    cache[SHARD:2 * SHARD]  # block 1 right after block 0: blocks 2 and 3 are queued for fetching
    store._pool.shutdown(wait=True)  # let the queued prefetches finish (no timing involved)
    features = [f"cache.zarr/features/c/{b}/0/0/0" for b in range(4)]
    assert sorted(hub.stats.downloads()) == features  # 2 and 3 fetched before anyone read them
    assert store.fetched_ahead == 2
    for start in range(2 * SHARD, 64, SHARD):
        cache[start:start + SHARD]
    assert sorted(hub.stats.downloads()) == features  # each block once: the reads found them on disk


def test_pull_then_offline_reopen_without_server(built, tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub") as server:
        pushed = hub_caches.push_cache(built, REPO, tag="v1", endpoint=server.endpoint, token=False)
        folder = hub_caches.pull(REPO, revision="v1", endpoint=server.endpoint, token=False, progress=False)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
            [*manifest["files"], "manifest.json"])
        assert folder.name == pushed.revision
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision in ("v1", pushed.revision):  # the tag resolves from the refs the first open recorded
        cache = hub_caches.open(REPO, revision=revision, endpoint=server.endpoint, in_memory=True)
        np.testing.assert_array_equal(cache[0:64], vfs.open_cache(built)[0:64])


def test_offline_names_the_file_that_was_never_fetched(built, tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub") as server:
        hub_caches.push_cache(built, REPO, tag="v1", endpoint=server.endpoint, token=False)
        cache = hub_caches.open(REPO, revision="v1", endpoint=server.endpoint, token=False)
        cache[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = hub_caches.open(REPO, revision="v1", endpoint=server.endpoint)
    np.testing.assert_array_equal(cache[1], vfs.open_cache(built)[1])  # block 0 is on disk
    with pytest.raises(HubOfflineError, match=r"features/c/2/0/0/0.*HF_HUB_OFFLINE=1") as error:
        cache[40]
    assert isinstance(error.value, ConnectionError) and isinstance(error.value, VFSError)
    with pytest.raises(HubOfflineError, match=r"dataset vfs-test/fmnist@main: HF_HUB_OFFLINE=1 is set"):
        hub_caches.open(REPO, endpoint=server.endpoint)  # "main" was never resolved online


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_file_altered_on_the_server_is_detected(built, tmp_path, damage):
    with HubServer(tmp_path / "hub") as server:
        pushed = hub_caches.push_cache(built, REPO, endpoint=server.endpoint, token=False)
        blob, _ = server.storage.blob("dataset", REPO, pushed.revision, "cache.zarr/features/c/2/0/0/0")
        data = bytearray(blob.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        else:
            del data[len(data) // 2:]
        blob.write_bytes(bytes(data))
        cache = hub_caches.open(REPO, revision=pushed.revision, endpoint=server.endpoint, token=False)
        np.testing.assert_array_equal(cache[0:16], vfs.open_cache(built)[0:16])  # other blocks are fine
        with pytest.raises(RemoteFileError, match="does not match the manifest") as error:
            cache[32:48]
    assert (error.value.repo_id, error.value.revision) == (REPO, pushed.revision)
    assert error.value.file == "cache.zarr/features/c/2/0/0/0"
    assert REPO in str(error.value) and pushed.revision in str(error.value)


def test_a_chunk_missing_from_the_repo_or_the_manifest_is_an_error_not_zeros(built, tmp_path):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    with HubServer(tmp_path / "hub") as server:
        api = HfApi(endpoint=server.endpoint, token=False)
        pushed = hub_caches.push_cache(built, REPO, endpoint=server.endpoint, token=False)
        lost = "cache.zarr/sq_norms/c/3/0/0"
        deleted = api.delete_file(lost, repo_id=REPO, repo_type="dataset").oid
        cache = hub_caches.open(REPO, revision=deleted, endpoint=server.endpoint, token=False)
        with pytest.raises(RemoteFileError, match="missing from the repo") as error:
            np.asarray(cache.sq_norms[50:60])
        assert error.value.file == lost and error.value.revision == deleted

        path = hub_caches.pull(REPO, revision=pushed.revision, endpoint=server.endpoint, token=False,
                               progress=False) / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["files"][lost]
        commit = api.create_commit(REPO, repo_type="dataset", commit_message="drop a chunk", operations=[
            CommitOperationAdd("manifest.json", json.dumps(manifest).encode()), CommitOperationDelete(lost)])
        with pytest.raises(RemoteFileError, match="not in the cache's manifest.*zeros"):
            hub_caches.open(REPO, revision=commit.oid, endpoint=server.endpoint, token=False)


def test_missing_repo_and_revision_have_their_own_errors(hub, pushed):
    with pytest.raises(RepoNotFoundError, match="vfs-test/nope") as error:
        hub_caches.open("vfs-test/nope", endpoint=hub.endpoint, token=False)
    assert isinstance(error.value, LookupError)
    with pytest.raises(RevisionNotFoundError, match="'v9'"):
        _open(hub, revision="v9")
    with pytest.raises(RevisionNotFoundError, match="0{40}"):
        _open(hub, revision="0" * 40)


def test_rate_limit_and_no_network_have_their_own_errors(hub, pushed, tmp_path, monkeypatch):
    import types

    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # no backoff
    cache = _open(hub, revision=pushed.revision)
    hub.app.state.rate_limited = True
    try:
        with pytest.raises(RateLimitError, match="429"):
            _open(hub)  # resolving the tag
        with pytest.raises(RateLimitError, match=r"429.*features/c/1/0/0/0|features/c/1/0/0/0.*429"):
            cache[20]  # a chunk, after huggingface_hub's own retries
    finally:
        hub.app.state.rate_limited = False
    assert sum(status == 429 for _, _, status in hub.stats.requests) > 2  # it did retry
    dead = HubServer(tmp_path / "dead").start()
    dead.stop()  # a port nothing listens on
    with pytest.raises(HubOfflineError, match="cannot be reached"):
        hub_caches.open(REPO, revision="v1", endpoint=dead.endpoint, token=False)


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_not_reported_as_offline(hub, pushed, status, monkeypatch):
    import types

    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # no backoff
    cache = _open(hub, revision=pushed.revision)
    hub.app.state.fail_status = status
    try:
        with pytest.raises(HubServerError, match=rf"HTTP {status} \(a server error.*try again") as error:
            _open(hub)  # resolving the tag
        assert error.value.status == status and "connect to the network" not in str(error.value)
        with pytest.raises(HubServerError, match=rf"HTTP {status}.*features/c/1/0/0/0"):
            cache[20]  # a chunk not downloaded yet
    finally:
        hub.app.state.fail_status = None
    assert isinstance(error.value, ConnectionError) and not isinstance(error.value, HubOfflineError)


def test_push_refuses_an_unfinished_cache(lite0, hub, tmp_path, monkeypatch):
    from vfs.cache import build as cache_build

    original, written = cache_build._write_block, []

    def write_one_block_then_stop(*args, **kwargs):  # the build is interrupted after its first block
        if written:
            raise KeyboardInterrupt
        written.append(True)
        original(*args, **kwargs)

    monkeypatch.setattr(cache_build, "_write_block", write_one_block_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_cache(lite0, LAYER, SPEC, tmp_path / "half", input_size=SIZE, shard_size=SHARD, progress=False)
    with pytest.raises(CacheIncompleteError, match="16 of 64 images done"):
        hub_caches.push_cache(tmp_path / "half", "vfs-test/half", endpoint=hub.endpoint, token=False)
    from hub_caches.__main__ import main

    assert main(["push", str(tmp_path / "half"), "--repo", "vfs-test/half", "--endpoint", hub.endpoint]) == 1
    with pytest.raises(RepoNotFoundError):  # nothing was created
        hub_caches.open("vfs-test/half", endpoint=hub.endpoint, token=False)


def test_card_manifest_and_tag(built, hub, pushed):
    from huggingface_hub import DatasetCard, HfApi

    from hub_caches.remote import sha256_file

    api = HfApi(endpoint=hub.endpoint, token=False)
    assert api.repo_info(REPO, repo_type="dataset", revision="v1").sha == pushed.revision
    folder = hub_caches.pull(REPO, revision="v1", endpoint=hub.endpoint, token=False, progress=False)
    text = (folder / "README.md").read_text()
    card = DatasetCard(text).data.to_dict()
    assert card["license"] == "mit" and card["task_categories"] == ["image-feature-extraction"]
    assert {key: card["vfs_cache"][key] for key in ("model", "layer", "dataset", "dtype", "shape")} == {
        "model": "efficientnet_lite0", "layer": LAYER, "dataset": SPEC, "dtype": "float16",
        "shape": [64, 80, 4, 4]}
    assert f'hub_caches.open("{REPO}", revision="v1")' in text
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sha256_file(folder / "manifest.json") == pushed.entry.manifest_sha256
    for name, entry in manifest["files"].items():
        assert sha256_file(folder / name) == entry["sha256"]
        assert entry["size"] == (folder / name).stat().st_size
    with pytest.raises(hub_caches.PushError, match="tag 'v1' already exists"):
        hub_caches.push_cache(built, REPO, tag="v1", endpoint=hub.endpoint, token=False)


def test_catalog_names_a_pinned_cache(built, hub, pushed, tmp_path, monkeypatch, capsys):
    from hub_caches.__main__ import main
    from hub_caches.catalog import entry_json

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"caches": [json.loads(entry_json(pushed.entry))]}))
    monkeypatch.setenv("HUB_CACHES_CATALOG", str(catalog))
    assert main(["list"]) == 0
    assert f"fmnist {REPO}@{pushed.revision[:10]}" in capsys.readouterr().out.replace("  ", "")
    hub.stats.reset()
    cache = hub_caches.open("fmnist", endpoint=hub.endpoint, token=False)
    assert not cache.in_memory  # the default (as vfs.open_cache's) streams a remote cache
    assert not any("/api/" in path for _, path, _ in hub.stats.requests)  # pinned: no revision lookup
    np.testing.assert_array_equal(cache[0:16], vfs.open_cache(built)[0:16])
    with pytest.raises(CatalogError, match="did you mean fmnist"):
        hub_caches.open("fmnst", endpoint=hub.endpoint)
    catalog.write_text(json.dumps({"caches": [json.loads(entry_json(pushed.entry)) | {"revision": "v1"}]}))
    with pytest.raises(CatalogError, match="not a commit sha"):
        hub_caches.open("fmnist", endpoint=hub.endpoint)
    # the catalog round-trips: the entry `push` printed loads back equal, field for field
    catalog.write_text(json.dumps({"caches": [json.loads(entry_json(pushed.entry))]}))
    assert hub_caches.load_catalog(catalog) == {"fmnist": pushed.entry}
    # the shipped catalog loads, one entry per name it lists, each pinned to a sha
    shipped = Path(hub_caches.__file__).with_name("catalog.json")
    names = [item["name"] for item in json.loads(shipped.read_text())["caches"]]
    entries = hub_caches.load_catalog(shipped)
    assert sorted(entries) == sorted(names) and all(len(e.revision) == 40 for e in entries.values())


def test_test_server_answers_ranges_and_pages(hub, pushed):
    """huggingface_hub 2.4 does not check for 206: a server that ignored Range would return wrong bytes."""
    from huggingface_hub import HfApi, HfFileSystem

    fs = HfFileSystem(endpoint=hub.endpoint, token=False)
    folder = hub_caches.pull(REPO, revision="v1", endpoint=hub.endpoint, token=False, progress=False)
    name = "cache.zarr/features/c/1/0/0/0"
    with fs.open(f"datasets/{REPO}@{pushed.revision}/{name}", "rb", block_size=1) as file:
        file.seek(100)
        assert file.read(50) == (folder / name).read_bytes()[100:150]
    assert any(status == 206 for _, _, status in hub.stats.requests)
    tree = HfApi(endpoint=hub.endpoint, token=False).list_repo_tree(REPO, repo_type="dataset", recursive=True,
                                                                     revision="v1")
    assert len([entry for entry in tree if hasattr(entry, "size")]) == len(pushed_files(folder))


def pushed_files(folder: Path) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return [*manifest["files"], "manifest.json", ".gitattributes"]


def test_command_line_push_and_pull(built, hub, capsys):
    from hub_caches.__main__ import main

    assert main(["push", str(built), "--repo", "vfs-test/cli", "--tag", "v1", "--codec", "lz4",
                 "--endpoint", hub.endpoint]) == 0
    out = capsys.readouterr().out
    sha = out.split("commit (tag v1):\n", 1)[1].split("\n", 1)[0]
    entry = json.loads(out.split("catalog.json):\n", 1)[1])
    assert entry["revision"] == sha and entry["repo_id"] == "vfs-test/cli" and entry["n"] == 64
    assert main(["pull", "vfs-test/cli", "--revision", "v1", "--endpoint", hub.endpoint]) == 0
    assert f"revision='{sha}'" in capsys.readouterr().out
    assert main(["pull", "vfs-test/absent", "--endpoint", hub.endpoint]) == 1
    assert "dataset repo 'vfs-test/absent' was not found" in capsys.readouterr().err


def test_distributed_features_are_rechunked_and_recompressed(built, hub, pushed):
    import zarr

    store = _store(hub, revision=pushed.revision)
    features = zarr.open_group(store, mode="r")["features"]
    assert features.shards == (SHARD, 4, 4, 80) and features.chunks == (4, 4, 4, 80)
    assert [type(codec).__name__ for codec in features.compressors] == ["BloscCodec", "Crc32cCodec"]
    assert features.compressors[0].cname.value == "zstd"
    np.testing.assert_array_equal(features[:], zarr.open_array(built / "features", mode="r")[:])
