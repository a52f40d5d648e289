"""`dlcore evaluate`: an instance task scored against annotated images (masks or Aperio XML outlines)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from dlcore.cli import main
from dlcore.errors import InputError
from dlcore.evaluate import evaluate_instances
from dlcore.io.aperio_xml import instance_mask, read_aperio_xml
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.train.data import load_folder
from synthetic import write_png


def _discs(shape, centres, radius):
    from skimage.draw import disk

    image = np.full(shape + (3,), 230, np.uint8)
    labels = np.zeros(shape, np.int32)
    for index, centre in enumerate(centres, start=1):
        rr, cc = disk(centre, radius, shape=shape)
        image[rr, cc] = (70, 50, 150)  # haematoxylin-blue nuclei on glass
        labels[rr, cc] = index
    return image, labels


def _aperio_xml(polygons, mpp=0.5) -> str:
    regions = "".join(
        f'<Region Id="{i}" Type="0"><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for i, poly in enumerate(polygons, start=1))
    return (f'<?xml version="1.0"?><Annotations MicronsPerPixel="{mpp}"><Annotation Id="1"><Regions>'
            f"{regions}</Regions></Annotation></Annotations>")


def test_aperio_xml_polygons_become_an_instance_mask(tmp_path):
    square = [(10, 10), (30, 10), (30, 30), (10, 30)]
    overlapping = [(25, 25), (45, 25), (45, 45), (25, 45)]
    hidden = [(12, 12), (14, 12), (14, 14)]  # drawn first below, then painted over entirely
    line = [(1, 1), (2, 2)]  # two vertices: not an outline
    path = tmp_path / "a.xml"
    path.write_text(_aperio_xml([hidden, square, overlapping, line], mpp=0.2527))
    annotations = read_aperio_xml(path)
    assert annotations.mpp == pytest.approx(0.2527) and len(annotations.polygons) == 3
    mask = instance_mask(annotations, (50, 60))
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2]  # the hidden one is gone, ids without gaps
    assert mask[20, 20] == 1 and mask[28, 28] == 2  # the later polygon wins where they overlap
    (tmp_path / "bad.xml").write_text("<Annotations/>")
    with pytest.raises(InputError, match="no <Region>"):
        read_aperio_xml(tmp_path / "bad.xml")


def test_datasets_take_aperio_xml_labels(tmp_path):
    image, _ = _discs((80, 80), [(40, 40)], 10)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_png(tmp_path / "images" / "one.png", image)
    (tmp_path / "labels" / "one.xml").write_text(_aperio_xml([[(30, 30), (50, 30), (50, 50), (30, 50)]]))
    dataset = load_folder(tmp_path, task="instances")
    assert dataset.samples[0].mask.shape == (80, 80) and dataset.samples[0].mask.max() == 1


def _dataset(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        centres = [(int(y), int(x)) for y, x in rng.integers(20, 236, (12, 2))]
        kept = []
        for c in centres:
            if all(np.hypot(c[0] - k[0], c[1] - k[1]) > 26 for k in kept):
                kept.append(c)
        image, labels = _discs((256, 256), kept, 9)
        write_png(tmp_path / "images" / f"{name}.png", image)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", labels.astype(np.uint16))
    return tmp_path


def test_evaluation_scores_a_task_against_its_annotations(tmp_path):
    dataset = _dataset(tmp_path)
    report = evaluate_instances(ClassicalNuclei(), dataset, mpp=0.5)
    pooled = report["pooled"]
    assert [i.name for i in report["images"]] == ["a.png", "b.png"]
    assert pooled["n_true"] == sum(i.n_true for i in report["images"]) > 15
    assert pooled["f1"] > 0.95 and pooled["ap"]["0.50"] > 0.9  # well-separated discs are found
    # a task that finds half-size objects scores lower: the matching is real
    eroded = evaluate_instances(ClassicalNuclei(sigma=0, threshold=5.0, background_radius_um=0), dataset, mpp=0.5)
    assert eroded["pooled"]["f1"] < pooled["f1"]


def test_evaluate_command_prints_and_writes_scores(tmp_path, capsys):
    dataset = _dataset(tmp_path / "ds")
    out = tmp_path / "scores.json"
    assert main(["evaluate", "nuclei-classical", str(dataset), "--mpp", "0.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pooled over 2 images: F1@0.5" in text and "a.png" in text
    assert '"f1"' in out.read_text()
    assert main(["evaluate", "nuclei-classical", str(tmp_path / "nothing")]) == 1
