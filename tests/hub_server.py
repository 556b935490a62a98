"""A small Hugging Face Hub-compatible HTTP server, for tests and benchmarks that cannot reach the Hub.

It answers the routes `huggingface_hub` 2.4 uses to create a repo, commit regular files (no LFS),
tag and branch, report repo info and file trees, and resolve dataset files with HEAD/GET and Range.
Errors carry the `X-Error-Code` headers that `huggingface_hub` maps to its exception types, and a
rate-limit switch answers every request with HTTP 429. It counts requests and bytes served.

    with HubServer(tmp_path / "hub") as hub:            # 127.0.0.1 on a free port, in a thread
        api = HfApi(endpoint=hub.endpoint)
        ...
        hub.stats.requests, hub.stats.bytes_served
        hub.app.state.rate_limited = True                    # every request answered 429 from now on
        hub.app.state.fail_status = 503                      # every request answered 503 (None: normal)

`python tests/hub_server.py ROOT [PORT [LATENCY_S [BYTES_PER_S]]]` serves ROOT from its own process
(a network's latency and bandwidth imitated if given); `GET /_stats`, `POST /_stats/reset` for counters.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

# tree entries per page (the Hub's own page size; tests lower it to exercise paging)
PAGE_SIZE = 1000


class StorageError(LookupError):
    """A repo, revision or file that does not exist (404), or a ref that does (409); `code` is the Hub's
    `X-Error-Code`, which huggingface_hub maps to RepositoryNotFoundError, RevisionNotFoundError..."""

    def __init__(self, code: str, message: str, *, status: int = 404, headers: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.headers = code, status, headers or {}


class RepoStorage:
    """Repos as commits of `{path: sha256}` in `root/state.json`, file contents in `root/blobs/<sha256>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self._state_path = root / "state.json"
        self._state = json.loads(self._state_path.read_text()) if self._state_path.exists() else {}
        self._lock = threading.RLock()

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self._state_path)

    def _repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self._state.get(f"{repo_type}/{repo_id}")
        if repo is None:
            raise StorageError("RepoNotFound", f"Repository {repo_id} ({repo_type}) not found")
        return repo

    def _put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / digest
        if not path.exists():
            path.write_bytes(data)
        return digest

    def _new_commit(self, repo: dict, parent: str | None, files: dict[str, str], message: str) -> str:
        text = json.dumps([parent, sorted(files.items()), message, len(repo["commits"])])
        sha = hashlib.sha1(text.encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "files": files, "message": message}
        return sha

    def create(self, repo_type: str, repo_id: str) -> bool:
        """Create a repo with one commit holding `.gitattributes`, as the Hub does; False if it exists."""
        with self._lock:
            if f"{repo_type}/{repo_id}" in self._state:
                return False
            repo = {"commits": {}, "branches": {}, "tags": {}}
            files = {".gitattributes": self._put_blob(b"*.bin filter=lfs diff=lfs merge=lfs -text\n")}
            repo["branches"]["main"] = self._new_commit(repo, None, files, "initial commit")
            self._state[f"{repo_type}/{repo_id}"] = repo
            self._save()
            return True

    def commit_of(self, repo_type: str, repo_id: str, revision: str) -> str:
        """The commit sha a branch, tag or sha names."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            for refs in (repo["branches"], repo["tags"]):
                if revision in refs:
                    return refs[revision]
            if revision in repo["commits"]:
                return revision
            raise StorageError("RevisionNotFound", f"Invalid rev id: {revision}")

    def commit(self, repo_type: str, repo_id: str, branch: str, added: dict[str, bytes],
               deleted: list[str], message: str) -> str:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if branch not in repo["branches"]:
                raise StorageError("RevisionNotFound", f"Invalid rev id: {branch} is not a branch")
            parent = repo["branches"][branch]
            files = dict(repo["commits"][parent]["files"])
            for path in deleted:
                prefix = path.rstrip("/") + "/"
                files = {name: blob for name, blob in files.items()
                         if name != path.rstrip("/") and not name.startswith(prefix)}
            files.update({path: self._put_blob(data) for path, data in added.items()})
            sha = self._new_commit(repo, parent, files, message)
            repo["branches"][branch] = sha
            self._save()
            return sha

    def create_ref(self, repo_type: str, repo_id: str, kind: str, name: str, revision: str) -> None:
        """Point tag or branch `name` (kind "tags" or "branches") at `revision`; 409 if it exists."""
        with self._lock:
            sha = self.commit_of(repo_type, repo_id, revision)
            refs = self._repo(repo_type, repo_id)[kind]
            if name in refs:
                raise StorageError("RefExists", f"{name} already exists in {repo_id}", status=409)
            refs[name] = sha
            self._save()

    def refs(self, repo_type: str, repo_id: str) -> dict:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return {kind: [{"name": name, "ref": f"refs/{'heads' if kind == 'branches' else 'tags'}/{name}",
                            "targetCommit": sha} for name, sha in repo[kind].items()]
                    for kind in ("branches", "tags")} | {"converts": []}

    def files(self, repo_type: str, repo_id: str, sha: str) -> dict[str, str]:
        with self._lock:
            return dict(self._repo(repo_type, repo_id)["commits"][sha]["files"])

    def blob(self, repo_type: str, repo_id: str, sha: str, path: str) -> tuple[Path, str]:
        """(file holding the content, sha256) of `path` at commit `sha`."""
        digest = self.files(repo_type, repo_id, sha).get(path)
        if digest is None:
            raise StorageError("EntryNotFound", f"{path} does not exist at {sha}",
                               headers={"X-Repo-Commit": sha})
        return self.root / "blobs" / digest, digest

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        """The Hub's tree entries under folder `path`: folders first, then files, each sorted."""
        files = self.files(repo_type, repo_id, self.commit_of(repo_type, repo_id, revision))
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        folders, entries = set(), []
        for name, digest in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                size = (self.root / "blobs" / digest).stat().st_size
                entries.append({"type": "file", "oid": digest[:40], "size": size, "path": name})
        if prefix and not entries and not folders:
            raise StorageError("EntryNotFound", f"{path} does not exist at {revision}")
        dirs = [{"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "path": name}
                for name in sorted(folders)]
        return dirs + entries


@dataclass
class Stats:
    """What the server answered since the last reset."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status) in order
    bytes_served: int = 0  # body bytes of file downloads (resolve GETs)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, method: str, path: str, status: int, nbytes: int = 0) -> None:
        with self.lock:
            self.requests.append((method, path, status))
            self.bytes_served += nbytes

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_served = 0

    def downloads(self) -> list[str]:
        """Paths of the files fetched with a GET on /resolve/ (one entry per GET)."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path, status in self.requests
                if method == "GET" and "/resolve/" in path and status in (200, 206)]

    def summary(self) -> dict:
        with self.lock:
            return {"requests": len(self.requests), "bytes_served": self.bytes_served,
                    "gets": sum(1 for m, p, _ in self.requests if m == "GET" and "/resolve/" in p),
                    "heads": sum(1 for m, _, _ in self.requests if m == "HEAD")}


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> (start, stop) with stop exclusive; None if unsatisfiable."""
    first, _, last = header.strip().removeprefix("bytes=").partition("-")
    if first == "":
        start, stop = max(0, size - int(last)), size
    else:
        start, stop = int(first), size if last == "" else min(size, int(last) + 1)
    return (start, stop) if start < stop else None


def create_app(storage: RepoStorage, stats: Stats, *, page_size: int = PAGE_SIZE, latency: float = 0,
               bandwidth: float = 0) -> FastAPI:
    """The FastAPI app; `app.state.rate_limited = True` answers every request with 429.

    `latency` (seconds per request) and `bandwidth` (bytes/s per download) imitate a real network.
    """
    app = FastAPI()
    app.state.rate_limited = False
    app.state.fail_status = None  # an HTTP status (500, 503...) to answer every request with, or None

    @app.middleware("http")
    async def count_and_limit(request: Request, call_next):
        path = request.url.path
        if path.startswith("/_stats"):
            return await call_next(request)
        if app.state.rate_limited:
            stats.record(request.method, path, 429)
            return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0"})
        if app.state.fail_status is not None:
            stats.record(request.method, path, app.state.fail_status)
            return JSONResponse({"error": "server error"}, status_code=app.state.fail_status)
        response = await call_next(request)
        sent = request.method == "GET" and "/resolve/" in path and response.status_code in (200, 206)
        nbytes = int(response.headers.get("content-length", 0)) if sent else 0
        stats.record(request.method, path, response.status_code, nbytes)
        if latency or bandwidth:
            await asyncio.sleep(latency + (nbytes / bandwidth if bandwidth else 0))
        return response

    @app.exception_handler(StorageError)
    async def not_found(request: Request, error: StorageError):
        headers = {"X-Error-Code": error.code, "X-Error-Message": str(error), **error.headers}
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)

    @app.get("/_stats")
    def get_stats():
        return stats.summary()

    @app.post("/_stats/reset")
    def reset_stats():
        stats.reset()
        return {}

    @app.post("/api/validate-yaml")
    def validate_yaml():
        return {"errors": [], "warnings": []}

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{request.base_url}{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if not storage.create(repo_type, repo_id):
            return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.post("/api/{repo_type}s/{org}/{name}/preupload/{revision}")
    async def preupload(repo_type: str, org: str, name: str, revision: str, request: Request):
        storage.commit_of(repo_type, f"{org}/{name}", revision)
        return {"files": [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                          for item in (await request.json())["files"]]}

    @app.post("/api/{repo_type}s/{org}/{name}/commit/{revision}")
    async def commit(repo_type: str, org: str, name: str, revision: str, request: Request):
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        if any(item["key"] == "lfsFile" for item in lines):
            return JSONResponse({"error": "this test server takes regular files only"}, status_code=400)
        summary = next(item["value"]["summary"] for item in lines if item["key"] == "header")
        added = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                 for item in lines if item["key"] == "file"}
        deleted = [item["value"]["path"] for item in lines if item["key"] in ("deletedFile", "deletedFolder")]
        sha = storage.commit(repo_type, f"{org}/{name}", revision, added, deleted, summary)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return {"commitUrl": f"{request.base_url}{prefix}{org}/{name}/commit/{sha}", "commitOid": sha,
                "pullRequestUrl": None}

    @app.post("/api/{repo_type}s/{org}/{name}/tag/{revision}")
    async def create_tag(repo_type: str, org: str, name: str, revision: str, request: Request):
        storage.create_ref(repo_type, f"{org}/{name}", "tags", (await request.json())["tag"], revision)
        return {}

    @app.post("/api/{repo_type}s/{org}/{name}/branch/{branch}")
    async def create_branch(repo_type: str, org: str, name: str, branch: str, request: Request):
        body = await request.json() if await request.body() else {}
        storage.create_ref(repo_type, f"{org}/{name}", "branches", branch, body.get("startingPoint", "main"))
        return {}

    @app.get("/api/{repo_type}s/{org}/{name}/refs")
    def list_refs(repo_type: str, org: str, name: str):
        return storage.refs(repo_type, f"{org}/{name}")

    @app.get("/api/{repo_type}s/{org}/{name}")
    @app.get("/api/{repo_type}s/{org}/{name}/revision/{revision}")
    def repo_info(repo_type: str, org: str, name: str, revision: str = "main"):
        sha = storage.commit_of(repo_type, f"{org}/{name}", revision)
        files = sorted(storage.files(repo_type, f"{org}/{name}", sha))
        return {"id": f"{org}/{name}", "sha": sha, "private": False, "tags": [],
                "siblings": [{"rfilename": path} for path in files]}

    @app.get("/api/{repo_type}s/{org}/{name}/tree/{revision}")
    @app.get("/api/{repo_type}s/{org}/{name}/tree/{revision}/{path:path}")
    def tree(repo_type: str, org: str, name: str, revision: str, request: Request, path: str = "",
             recursive: bool = False, cursor: int = 0):
        entries = storage.tree(repo_type, f"{org}/{name}", revision, path, recursive)
        headers = {}
        if cursor + page_size < len(entries):  # cursor paging through the Link header, as the Hub does
            headers["Link"] = f'<{request.url.include_query_params(cursor=cursor + page_size)}>; rel="next"'
        return JSONResponse(entries[cursor:cursor + page_size], headers=headers)

    def resolve(repo_type: str, repo_id: str, revision: str, path: str, request: Request) -> Response:
        sha = storage.commit_of(repo_type, repo_id, revision)
        blob, etag = storage.blob(repo_type, repo_id, sha, path)
        data = blob.read_bytes()
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        status = 200
        if "range" in request.headers:
            span = _parse_range(request.headers["range"], len(data))
            if span is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(data)}"
            data, status = data[span[0]:span[1]], 206
        if request.method == "HEAD":
            return Response(status_code=status, headers={**headers, "Content-Length": str(len(data))})
        return Response(content=data, status_code=status, headers=headers,
                        media_type="application/octet-stream")

    @app.api_route("/datasets/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_dataset(org: str, name: str, revision: str, path: str, request: Request):
        return resolve("dataset", f"{org}/{name}", revision, path, request)

    return app


class HubServer:
    """The app served by uvicorn on 127.0.0.1 in a daemon thread; a context manager that stops it."""

    def __init__(self, root: Path | str, *, port: int = 0, page_size: int = PAGE_SIZE, latency: float = 0,
                 bandwidth: float = 0) -> None:
        self.storage = RepoStorage(Path(root))
        self.stats = Stats()
        self.app = create_app(self.storage, self.stats, page_size=page_size, latency=latency,
                              bandwidth=bandwidth)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = self._socket.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        daemon=True)

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test Hub server did not start on {self.endpoint}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`python tests/hub_server.py ROOT [PORT [LATENCY_S [BYTES_PER_S]]]`: serve ROOT until killed."""
    port, latency, bandwidth = (float(v) for v in [*argv[1:4], 0, 0, 0][:3])
    server = HubServer(argv[0], port=int(port), latency=latency, bandwidth=bandwidth).start()
    print(server.endpoint, flush=True)  # the first line of output: what a benchmark reads
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
