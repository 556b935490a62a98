"""Write `skimage.data.lfw_subset()` as a folder with a face box per face, for the box protocols of
docs/experiments.md (VFS v1 Fig. 8's "face queries retrieving non-faces", VFS v2 Fig. 3's region query).

    PYTHONPATH=. python docs/figures/lfw_folder.py OUT_FOLDER

Writes OUT_FOLDER/NNN.png (the 200 grey 25x25 images as they are) and OUT_FOLDER/labels.csv
(path,label,box), readable as `folder:OUT_FOLDER`. The 100 faces are aligned, tightly cropped faces,
so every face gets the same box, the inner face from the brows to the chin (rows 5-24, columns 3-21,
`top left bottom right` = `5 3 24 21`: 19x18 pixels of 25x25), read off the mean face; it is not a
per-image annotation. The 100 non-faces get no box: a face query whose match is one of them is a miss
(IoU 0) in `v1-fig8`, and they count as "other label" in `v2-fig3`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from vfs.datasets import lfw_subset

FACE_BOX = (5, 3, 24, 21)  # (top, left, bottom, right) in the 25x25 pixels of every face


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (must not hold images yet)")
    args = parser.parse_args()
    data = lfw_subset()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(len(data)):
        item = data[index]
        name = f"{index:03d}.png"
        Image.fromarray(np.asarray(item.image)[..., 0]).save(args.out / name)  # grey, as stored
        face = data.label_names[item.label] == "face"
        rows.append({"path": name, "label": data.label_names[item.label],
                     "box": " ".join(map(str, FACE_BOX)) if face else ""})
    with (args.out / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "box"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} images ({sum(bool(r['box']) for r in rows)} with a face box) to {args.out}")


if __name__ == "__main__":
    main()
