"""How much scratch a run's checkpoint takes: its folder just after the last tile, beside the results.

Usage: ``python tools/checkpoint_size.py SLIDE [TASK]`` (default task: nuclei-classical).  Prints the
checkpoint folder's size, its objects file, the CSV and GeoJSON, and the number of objects.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path


def main() -> None:
    from dlcore.io import open_slide
    from dlcore.io.local_sink import LocalFolderSink, slide_stem
    from dlcore.tasks import resolve_task
    from dlcore.tiling.checkpoint import OBJECTS_FILE, checkpoint_root
    from dlcore.workflows import RunOptions, analyse_slide

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("task", nargs="?", default="nuclei-classical")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlcore-checkpoint-size-"))
    seen: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tiles" and done == total:
            for folder in checkpoint_root(work).iterdir():
                seen["checkpoint_kib"] = int(subprocess.run(["du", "-sk", str(folder)], capture_output=True,
                                                            text=True).stdout.split()[0])
                seen["objects_file_bytes"] = (folder / OBJECTS_FILE).stat().st_size

    slide = open_slide(args.slide)
    try:
        task = resolve_task(args.task, {})
        result = analyse_slide(slide, task, LocalFolderSink(work / "out"), options=RunOptions(work_dir=work),
                               progress=progress)
    finally:
        slide.close()
    folder = work / "out" / slide_stem(args.slide.name) / task.name
    text = sum((folder / name).stat().st_size for name in ("objects.csv", "objects.geojson"))
    print({**seen, "csv_geojson_bytes": text, "objects": result.summary.get("objects")})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
