"""Live suite against a real OMERO server (marker ``omero``; off by default).

Run against a staging server (never production)::

    OMERO_HOST=staging.example.org OMERO_USER=dlcore-test OMERO_PASSWORD=... \\
        python -m pytest -m omero tests/test_omero_live.py

The user needs a read-annotate or read-write group; uploading the scripts as official scripts needs
an admin (``OMERO_ADMIN_USER``/``OMERO_ADMIN_PASSWORD``; skipped otherwise).  Everything the suite
creates is deleted at the end.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.omero
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def conn():
    if not os.environ.get("OMERO_HOST"):
        pytest.skip("set OMERO_HOST, OMERO_USER and OMERO_PASSWORD to run the live OMERO suite")
    from dlcore.omero.connection import connect

    conn = connect()
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def image(conn, tmp_path_factory):
    from omero_double import demo_levels

    base = demo_levels(tmp_path_factory.mktemp("live"))[0]
    planes = (base[..., c] for c in range(3))
    dataset = conn.getUpdateService().saveAndReturnObject(_dataset("dlcore live test"))
    img = conn.createImageFromNumpySeq(planes, "dlcore-live-demo", sizeC=3, dataset=conn.getObject("Dataset", dataset.id.val))
    pixels = img.getPrimaryPixels()._obj
    from omero.model import LengthI
    from omero.model.enums import UnitsLength

    pixels.setPhysicalSizeX(LengthI(0.5, UnitsLength.MICROMETER))
    pixels.setPhysicalSizeY(LengthI(0.5, UnitsLength.MICROMETER))
    conn.getUpdateService().saveObject(pixels)
    yield conn.getObject("Image", img.getId())
    conn.deleteObjects("Dataset", [dataset.id.val], deleteChildren=True, deleteAnns=True, wait=True)


def _dataset(name):
    from omero.model import DatasetI
    from omero.rtypes import rstring

    d = DatasetI()
    d.setName(rstring(name))
    return d


def test_run_twice_writes_once(conn, image):
    from dlcore.omero.workflows import run_on_objects

    for _ in range(2):
        [report] = run_on_objects(conn, "nuclei-classical", "Image", [image.getId()], {})
        assert report.ok, report.message
    rois = conn.getRoiService().findByImage(image.getId(), None).rois
    assert len(rois) == min(report.summary["objects"], 5000)
    maps = [a for a in conn.getObject("Image", image.getId()).listAnnotations(ns="dlcore/nuclei-classical")]
    assert len([a for a in maps if a.OMERO_TYPE.__name__ == "MapAnnotationI"]) == 1
    label = conn.getObject("Image", report.output_id("label image"))
    assert label is not None and label.getPrimaryPixels().getPixelsType().getValue() == "uint16"


def test_scripts_upload_and_run(conn, image):
    user, password = os.environ.get("OMERO_ADMIN_USER"), os.environ.get("OMERO_ADMIN_PASSWORD")
    if not (user and password):
        pytest.skip("uploading official scripts needs OMERO_ADMIN_USER and OMERO_ADMIN_PASSWORD")
    from omero.rtypes import rlong, rlist, rstring

    host = os.environ["OMERO_HOST"]
    login = ["-s", host, "-u", user, "-w", password]
    # `omero script upload` takes --official and the file only: the file argument, as given, becomes the
    # script's path in the script repository (omero-py plugins/script.py upload), so run it from omero_scripts/
    relative = "Deep_Learning/Classical_Segmentation.py"
    svc = conn.getScriptService()
    existing = svc.getScriptID(relative)
    verb = ["replace", str(existing)] if existing and existing > 0 else ["upload", "--official"]
    out = subprocess.run([sys.executable, "-m", "omero", "script", *verb, relative, *login],
                         cwd=ROOT / "omero_scripts", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    script_id = svc.getScriptID(relative)
    assert script_id and script_id > 0
    proc = svc.runScript(script_id, {"Data_Type": rstring("Image"), "IDs": rlist([rlong(image.getId())]),
                                     "Max_ROIs": rlong(100)}, None)
    import omero.scripts
    cb = omero.scripts.wait(conn.c, proc) if hasattr(omero.scripts, "wait") else None
    results = proc.getResults(600) if cb is None else cb
    assert "1 of 1 image analysed" in results["Message"].getValue()
