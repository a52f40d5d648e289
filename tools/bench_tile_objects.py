"""Per-object cost of stitching on four tiles of a slide: what a worker does (find, measure, outline,
record, render the CSV/GeoJSON text) and what the writer does (ids and canvas, writing the text), in
ms per object.

    python tools/bench_tile_objects.py SLIDE.ome.tif

The figures in BENCHMARKS.md ("Per-object cost on a demo tile") come from this on the demo slide.
"""
import sys
import tempfile
import time
from pathlib import Path
import numpy as np
from dlcore.io import open_slide
from dlcore.io.slide import plan_resolution
from dlcore.io.labels import LabelCanvas
from dlcore.io.local_sink import LocalFolderSink
from dlcore.io.sink import RunContext
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tiling.engine import read_window
from dlcore.tiling.grid import GridSpec, make_grid
from dlcore.tiling.stitch import InstanceStitcher
from dlcore.workflows import calibration_windows, task_at_resolution
from dlcore.tiling.tissue import detect_tissue
slide = open_slide(sys.argv[1])
plan = plan_resolution(slide.info, 0.5)
task = task_at_resolution(ClassicalNuclei(), plan)
tissue = detect_tissue(slide)
task = task.prepare(calibration_windows(slide, plan, slide.info, tissue, count=8, size=512))
w, h = plan.working_size(slide.info)
tiles = make_grid(w, h, GridSpec(task.tile_size, task.halo), mask=tissue.mask)[8:12]
windows = [read_window(slide, plan, t) for t in tiles]
labels = [task.predict([x])[0] for x in windows]
canvas = LabelCanvas(Path(tempfile.mkdtemp()) / "l.zarr", w, h)
st = InstanceStitcher(canvas, factor=plan.factor, mpp=plan.working_mpp, min_pixels=task.min_size, bounds=(slide.info.width, slide.info.height))
t0 = time.perf_counter(); found = [st.find_objects(t, x, l) for t, x, l in zip(tiles, windows, labels)]; t1 = time.perf_counter()
n = sum(f.count for f in found)
print(f"objects {n}: find {1e3*(t1-t0)/n:.3f} ms/object")
import dlcore.tiling.tile_objects as to
t0=time.perf_counter()
for t, x, l in zip(tiles, windows, labels):
    to.find_tile_objects(t, x, l, canvas_size=(w,h), min_pixels=task.min_size, classify=None)
t1=time.perf_counter()
orig = to.outlines; to.outlines = lambda ms: [np.zeros((0,2))]*len(ms)
for t, x, l in zip(tiles, windows, labels):
    to.find_tile_objects(t, x, l, canvas_size=(w,h), min_pixels=task.min_size, classify=None)
t2=time.perf_counter(); to.outlines = orig
print(f"find with outline {1e3*(t1-t0)/n:.3f}, without {1e3*(t2-t1)/n:.3f} ms/object")
out = Path(tempfile.mkdtemp())
sink = LocalFolderSink(out)
ctx = RunContext(slide=slide.info, run_key="x", task_kind="instances", working_mpp=plan.working_mpp, factor=plan.factor, working_size=(w, h), class_names=(), class_colors=())
sink.begin(ctx)
from dlcore.io.object_text import with_text
t0 = time.perf_counter()
for f in found: with_text(f.records)
print(f"render text (worker) {1e3*(time.perf_counter()-t0)/n:.3f} ms/object")
t0 = time.perf_counter(); recs = [st.add_objects(t, x, f) for t, x, f in zip(tiles, windows, found)]; t1 = time.perf_counter()
for r in recs: sink.add_objects(r)
t2 = time.perf_counter()
print(f"add_objects {1e3*(t1-t0)/n:.3f} ms/object, sink {1e3*(t2-t1)/n:.3f} ms/object")
t0=time.perf_counter()
for t in tiles: canvas.read_padded(*t.window)
print(f"canvas read per tile {1e3*(time.perf_counter()-t0)/len(tiles):.1f} ms")
