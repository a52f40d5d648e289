"""The newcomer's first command (the demo) and the benchmark command work end to end."""
from __future__ import annotations

import json

import tifffile

from dlcore.cli import main


def test_demo_builds_a_pyramidal_slide_and_segments_it(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "✓ demo-slide.ome.tif:" in out and "objects.geojson" in out
    with tifffile.TiffFile(tmp_path / "demo-slide.ome.tif") as tif:
        series = tif.series[0]
        assert series.shape == (4096, 6144, 3) and len(series.levels) >= 3
        assert tif.pages[0].is_tiled and 'PhysicalSizeX="0.5"' in tif.ome_metadata
    summary = json.loads((tmp_path / "demo-slide" / "nuclei-classical" / "provenance.json").read_text())["summary"]
    assert summary["objects"] > 1000 and 0.3 < summary["tissue_fraction"] < 0.8


def test_benchmark_command_reports_every_figure(tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert main(["benchmark", "--sizes", "1024", "--cache", str(tmp_path), "--json", str(report)]) == 0
    row = json.loads(report.read_text())["results"][0]
    for key in ("s_per_gpx_tissue", "task_s_per_gpx_tissue", "pipeline_efficiency", "peak_rss_mb", "stages",
                "workers", "worker_peak_rss_mb", "total_rss_bound_mb"):
        assert key in row
    assert 0 < row["pipeline_efficiency"] <= 3 and row["peak_rss_mb"] > 50  # > 1: workers beat one core
    assert row["workers"] >= 1 and row["total_rss_bound_mb"] >= row["peak_rss_mb"] + row["worker_peak_rss_mb"]
    assert "| slide | workers | tissue Gpx |" in capsys.readouterr().out


def test_benchmark_of_the_automatic_nuclei_task_times_the_task_it_becomes(tmp_path):
    report = tmp_path / "bench.json"
    assert main(["benchmark", "--sizes", "1024", "--task", "nuclei", "--cache", str(tmp_path), "--json", str(report)]) == 0
    row = json.loads(report.read_text())["results"][0]
    assert row["objects"] > 100 and row["task_alone_s"] > 0 and 0 < row["pipeline_efficiency"] <= 3
