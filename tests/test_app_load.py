"""Many users at once, and bad uploads, against the running app (through `gradio_client`).

The load benchmark (`bench/load.py`) measures 1, 4 and 16 users on the default caches; this keeps a
small version in the suite: concurrent users get no error and exactly a single user's answer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app_limits import png_header

from app import editor, files, handlers
from app.library import CacheLibrary
from app.state import Query, SearchOptions

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is in requirements-dev.txt")
pytestmark = pytest.mark.slow  # starts a server (10-25 s here)

FMNIST = "fmnist-blocks5"
USERS, ROUNDS = 8, 2


@pytest.fixture(scope="module")
def library(app_caches) -> CacheLibrary:
    library = CacheLibrary(app_caches, hub=False)
    library.refresh()
    return library


def query_files(library, index: int, folder: Path) -> tuple[Path, Path]:
    """Dataset image `index` as displayed, and an RGBA layer painting a band across it."""
    image = handlers.display_image(library, FMNIST, index)  # (H, W, 3)
    layer = np.zeros((*image.shape[:2], 4), np.uint8)  # (H, W, 4)
    layer[100 + 20 * index : 220 + 20 * index, 40:330] = (255, 120, 0, 255)
    paths = folder / f"q{index}.png", folder / f"l{index}.png"
    Image.fromarray(image).save(paths[0])
    Image.fromarray(layer).save(paths[1])
    return paths


def search(client, paths, k: int = 6):
    handle = gradio_client.handle_file
    argument = {"background": handle(str(paths[0])), "layers": [handle(str(paths[1]))], "composite": None,
                "id": None}
    gallery, summary, *_ = client.predict(FMNIST, argument, k, True, "no limit", "all labels", api_name="/search")
    pictures = tuple(hashlib.sha256(Path(item["image"]).read_bytes()).hexdigest() for item in gallery)
    return tuple(item["caption"] for item in gallery), pictures, summary.split(" · ")[0]


def test_concurrent_users_get_a_single_users_answer_and_no_error(app_url, library, tmp_path):
    queries = [query_files(library, index, tmp_path) for index in range(4)]
    alone = gradio_client.Client(app_url, verbose=False, download_files=str(tmp_path / "alone"))
    expected = [search(alone, paths) for paths in queries]
    clients = [gradio_client.Client(app_url, verbose=False, download_files=str(tmp_path / f"user{user}"))
               for user in range(USERS)]
    barrier, answers, errors = threading.Barrier(USERS), [], []

    def user(number: int):
        barrier.wait()
        for _ in range(ROUNDS):
            try:
                answers.append((number % len(queries), search(clients[number], queries[number % len(queries)])))
            except Exception as error:  # noqa: BLE001 -- every failure is collected and shown
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=user, args=(number,)) for number in range(USERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(answers) == USERS * ROUNDS
    for query, answer in answers:
        assert answer == expected[query]


def test_result_pictures_are_rendered_once_and_never_rewritten(library):
    """Gradio rewrote each returned picture in place, while another response could be streaming it."""
    image = handlers.display_image(library, FMNIST, 2)
    mask = np.zeros(image.shape[:2], bool)
    mask[120:260, 60:300] = True
    query = Query(cache_key=FMNIST, image=image, mask=mask)
    outcome = handlers.run_search(library, query, SearchOptions(k=5))
    first = files.result_files(library, outcome)
    stamps = [os.stat(path).st_mtime_ns for path, _ in first]
    again = files.result_files(library, outcome)
    assert again == first and [os.stat(path).st_mtime_ns for path, _ in again] == stamps
    for (path, caption), (picture, expected_caption) in zip(first, handlers.result_items(library, outcome)):
        assert caption == expected_caption
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(picture))  # the same pixels
    grid = files.grid_file(library, query)
    assert files.grid_file(library, query) == grid
    preview = handlers.grid_preview(library, FMNIST, editor.editor_value(image, mask))
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")), np.asarray(preview.convert("RGB")))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n", "not an image this app can read"),
        (png_header(20000, 20000), "the image has more than"),
        (png_header(8000, 6000), "the image is 8000x6000"),
    ],
)
def test_bad_uploads_are_refused_in_words_without_server_paths(app_url, tmp_path, content, message):
    client = gradio_client.Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"))
    upload = tmp_path / "photo.png"
    upload.write_bytes(content)
    layer = tmp_path / "layer.png"
    Image.new("RGBA", (8, 8)).save(layer)
    handle = gradio_client.handle_file
    argument = {"background": handle(str(upload)), "layers": [handle(str(layer))], "composite": None, "id": None}
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as caught:
        client.predict(FMNIST, argument, 6, True, "no limit", "all labels", api_name="/search")
    assert "/tmp" not in str(caught.value) and "photo.png" not in str(caught.value)


def test_the_server_runs_one_blas_thread(tmp_path):
    """numpy's OpenBLAS would run each tiny product of a search on a thread per core (`limit_blas_threads`)."""
    import subprocess
    import sys

    script = ("import numpy; from threadpoolctl import threadpool_info; from app.__main__ import limit_blas_threads; "
              "before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']; "
              "limit_blas_threads(); "
              "print(before, [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'])")
    env = {name: value for name, value in os.environ.items() if name not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    before, after = done.stdout.strip().split("] [")
    assert after.rstrip("]") == "1", done.stdout
    if (os.cpu_count() or 1) > 1:  # on one core there is nothing to limit
        assert before.lstrip("[") != "1", done.stdout
