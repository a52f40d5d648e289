"""OMERO benchmark: time per 1,000 objects to build ROIs and table rows, and server calls of a demo run.

Run: ``PYTHONPATH=. python tests/omero_benchmark.py [--width 1536 --height 1024]``.  Calls are
counted at the in-process double (tests/omero_double.py), so they are what dlcore asks of a server.
"""
import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from omero_double import Server, demo_levels  # noqa: E402

from dlcore.config import Config  # noqa: E402
from dlcore.objects import ObjectRecord  # noqa: E402
from dlcore.omero.rois import object_roi  # noqa: E402
from dlcore.omero.tables import TableWriter  # noqa: E402
from dlcore.omero.workflows import run_on_objects  # noqa: E402


def objects(n: int) -> list[ObjectRecord]:
    ring = tuple((10 + 8 * math.cos(a), 10 + 8 * math.sin(a)) for a in [i * 2 * math.pi / 64 for i in range(64)])
    return [ObjectRecord(id=i, centroid=(10.0, 10.0), bbox=(2.0, 2.0, 18.0, 18.0), area_px=200, area_um2=50.0,
                         perimeter_px=50.0, mean_intensity=(120.0, 80.0, 150.0), polygon=ring) for i in range(1, n + 1)]


def build_times(n: int = 5000) -> dict:
    objs = objects(n)
    t0 = time.perf_counter()
    for o in objs:
        object_roi(o, 1, marker="dlcore:x:y")
    roi_s = (time.perf_counter() - t0) / n * 1000
    server = Server()
    group = server.add_group("g")
    user = server.add_user("u", [group])
    writer = TableWriter(server.connect(user, group), "t.h5", ("R", "G", "B"), {"omero.group": str(group)})
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        writer.add(1, objs[start:start + 500], list(range(start, start + 500)))
    table_s = (time.perf_counter() - t0) / n * 1000
    return {"roi_build_s_per_1000": round(roi_s, 4), "table_rows_s_per_1000": round(table_s, 4)}


def demo_run_calls(width: int, height: int, cap: int) -> dict:
    server = Server()
    group = server.add_group("g")
    user = server.add_user("u", [group])
    dataset = server.add_dataset("d", owner=user, group=group)
    with tempfile.TemporaryDirectory() as tmp:
        image = server.add_image(demo_levels(Path(tmp), width, height), name="demo", owner=user, group=group,
                                 dataset=dataset, tile=(256, 256))
    server.calls.clear()
    t0 = time.perf_counter()
    [report] = run_on_objects(server.connect(user, group), "nuclei-classical", "Image", [image], {},
                              config=Config(roi_cap=cap))
    seconds = time.perf_counter() - t0
    reads = sum(v for k, v in server.calls.items() if k.startswith(("RawPixelsStore.get", "IQuery", "Gateway.getObject")))
    return {"slide": f"{width}x{height}", "objects": report.summary["objects"], "rois": min(cap, report.summary["objects"]),
            "run_s": round(seconds, 1), "calls_total": sum(server.calls.values()), "read_calls": reads,
            "calls": dict(sorted(server.calls.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=1536)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--cap", type=int, default=5000)
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(build_times())
    print(demo_run_calls(args.width, args.height, args.cap))


if __name__ == "__main__":
    main()
