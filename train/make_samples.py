"""Write the shapes samples in samples/ (shapes-<colour>-<shape>.png|jpg) from fixed seeds.

    .venv/bin/python train/make_samples.py

Each sample is ``mmcli.testing.shapes.scene(seed)`` with its colour, shape, canvas and size pinned (the rest —
rotation, position, exact colour, background — comes from the seed), so the files are reproducible.
"""

from __future__ import annotations

import common as C

from mmcli.testing import shapes

SAMPLES = [
    # seed, colour, shape, width, height, size, format
    (11, "red", "circle", 640, 480, 0.55, "png"),
    (12, "blue", "square", 300, 400, 0.5, "jpg"),
    (18, "green", "triangle", 1024, 768, 0.6, "png"),
    (14, "yellow", "star", 256, 256, 0.65, "png"),
    (15, "purple", "star", 480, 240, 0.6, "jpg"),
    (16, "orange", "triangle", 200, 150, 0.5, "jpg"),
]


def main() -> None:
    out = C.ROOT / "samples"
    out.mkdir(exist_ok=True)
    for seed, colour, shape, width, height, size, fmt in SAMPLES:
        scene = shapes.scene(seed, colour=colour, shape=shape, width=width, height=height, size=size)
        assert shapes.inside(scene), scene
        path = out / f"shapes-{colour}-{shape}.{fmt}"
        image = scene.render()
        if fmt == "jpg":
            image.save(path, quality=90)
        else:
            image.save(path, optimize=True)
        print(f"{path.relative_to(C.ROOT)}: {scene.width}x{scene.height}, {scene.background_name} background")


if __name__ == "__main__":
    main()
