"""Task inference for images/ + labels/ folders read without a task (issue 17): instance masks are not
taken for thousands of semantic classes, a class table names semantic classes, ambiguity asks for --task."""
import json

import numpy as np
import pytest
import tifffile

from dlcore.errors import InputError
from dlcore.train.data import load_folder
from dlcore.train.task_inference import infer_task, summarize_classes, survey_masks
from synthetic import disc_image, write_png


def _folder(root, masks, images=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, mask in enumerate(masks):
        image = images[i] if images is not None else np.full(mask.shape, 50, np.uint8)
        write_png(root / "images" / f"im{i}.png", image)
        tifffile.imwrite(root / "labels" / f"im{i}.tif", mask.astype(np.uint16))
    return root


def _instance_folder(root, n=2, size=256):
    from skimage.measure import label

    images = [disc_image(size, seed=i) for i in range(n)]
    masks = []
    for i, im in enumerate(images):
        lab = label(im > 100)
        lab[lab > 0] += 1000 * i  # ids unique over the dataset, as many exporters write them
        masks.append(lab)
    return _folder(root, masks, images)


def _semantic_masks(n=2, size=96):
    """Three classes, each in several separate stripes/patches per mask."""
    masks = []
    for i in range(n):
        m = np.zeros((size, size), np.int32)
        for k, y in enumerate(range(0, size, 12)):
            m[y:y + 8, :] = 1 + (k + i) % 3
        masks.append(m)
    return masks


def test_instance_masks_are_instances_and_export_stays_short(tmp_path, capsys):
    from dlcore.cli import main

    src = _instance_folder(tmp_path / "src")
    ds = load_folder(src)
    assert ds.task == "instances" and ds.classes == ("nucleus",)
    assert main(["export-dataset", str(src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) < 40 and len(printed) < 2000
    assert "instance ids" in printed and "class_" not in printed
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["task"] == "instances" and meta["classes"] == ["nucleus"]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "class_" not in readme and len(readme) < 3000


def test_class_table_gives_semantic_with_its_names(tmp_path):
    root = _folder(tmp_path / "a", _semantic_masks())
    (root / "classes.txt").write_text("tumour\nstroma\nfat\n")
    ds = load_folder(root)
    assert (ds.task, ds.classes) == ("semantic", ("tumour", "stroma", "fat"))
    # a table beside the masks, as csv or json, counts too
    root = _folder(tmp_path / "b", _semantic_masks())
    (root / "labels" / "classes.csv").write_text("value,name\n2,stroma\n1,tumour\n3,fat\n")
    assert load_folder(root).classes == ("tumour", "stroma", "fat")
    root = _folder(tmp_path / "c", _semantic_masks())
    (root / "classes.json").write_text(json.dumps({"1": "tumour", "2": "stroma", "3": "fat"}))
    assert load_folder(root).classes == ("tumour", "stroma", "fat")


def test_few_recurring_values_are_semantic_with_generic_names(tmp_path):
    ds = load_folder(_folder(tmp_path, _semantic_masks()))
    assert (ds.task, ds.classes) == ("semantic", ("class_1", "class_2", "class_3"))


@pytest.mark.parametrize("kind", ["few_blobs", "binary"])
def test_ambiguous_masks_ask_for_the_task(tmp_path, kind, capsys):
    from dlcore.cli import main

    mask = np.zeros((64, 64), np.int32)
    if kind == "few_blobs":  # three ids, one blob each: three nuclei or three regions?
        mask[5:15, 5:15], mask[30:40, 30:40], mask[50:60, 5:15] = 1, 2, 3
    else:  # one value, many small blobs: a binary mask of objects or of one class?
        for y in range(4, 60, 12):
            mask[y:y + 6, 4:10] = 1
            mask[y:y + 6, 30:36] = 1
    root = _folder(tmp_path / "src", [mask])
    with pytest.raises(InputError) as err:
        load_folder(root)
    message = str(err.value)
    assert "--task instances" in message and "--task semantic" in message
    assert "distinct non-zero value" in message and "blob(s) per value" in message and "typical object" in message
    assert main(["export-dataset", str(root), str(tmp_path / "out")]) == 1
    assert len(capsys.readouterr().err.splitlines()) < 5


def test_explicit_task_wins(tmp_path):
    root = _folder(tmp_path / "s", _semantic_masks())
    assert load_folder(root, task="instances").task == "instances"
    mask = np.zeros((32, 32), np.int32)
    mask[2:8, 2:8], mask[20:28, 20:28] = 1, 2
    ambiguous = _folder(tmp_path / "a", [mask])
    assert load_folder(ambiguous, task="semantic").classes == ("class_1", "class_2")
    assert load_folder(ambiguous, task="instances").task == "instances"


def test_explicit_semantic_on_instance_masks_refuses_thousands_of_classes(tmp_path, capsys):
    from dlcore.cli import main

    src = _instance_folder(tmp_path / "src")
    with pytest.raises(InputError, match="classes.txt") as err:
        load_folder(src, task="semantic")
    assert "--task instances" in str(err.value) and "class_1..class_" in str(err.value)
    assert len(str(err.value)) < 600
    # with a class table it is the user's call
    top = max(int(tifffile.imread(p).max()) for p in (src / "labels").iterdir())
    (src / "classes.txt").write_text("".join(f"c{i}\n" for i in range(1, top + 1)))
    assert load_folder(src, task="semantic").task == "semantic"
    assert main(["export-dataset", str(src), str(tmp_path / "out"), "--task", "semantic"]) == 0
    printed = capsys.readouterr().out
    assert len(printed) < 2000 and "more" in printed


def test_survey_and_summary():
    survey = survey_masks([np.array([[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 3, 0]])])
    assert (survey.distinct_values, survey.max_values_per_mask) == (3, 3)
    assert survey.one_blob_fraction == pytest.approx(2 / 3)
    assert summarize_classes("semantic", [f"c{i}" for i in range(30)]).endswith("c9, ... and 20 more")
    assert summarize_classes("instances", ["nucleus"], ids=6528) == "6,528 instance ids, object class(es) nucleus"
    with pytest.raises(InputError, match="every mask is empty"):
        infer_task(__import__("pathlib").Path("x"), [np.zeros((4, 4), int)])
