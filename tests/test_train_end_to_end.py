"""Tiny end-to-end trainings: a package the registry loads, transfer learning freezes stages, k-fold."""
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("dlcore.models.package")

from dlcore.train.augment import AugmentSpec  # noqa: E402
from dlcore.train.data import AnnotatedDataset, Sample  # noqa: E402
from dlcore.train.spec import TrainSpec  # noqa: E402

TINY = dict(epochs=2, steps_per_epoch=2, batch_size=2, patch_size=32, channels=(4, 8), tile_size=64, halo=8,
            threads=1, augment=AugmentSpec.none(), val_fraction=0.2, test_fraction=0.2)


def _blobs(seed: int):
    rng = np.random.default_rng(seed)
    image = np.full((64, 64, 3), 235, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    yy, xx = np.mgrid[:64, :64]
    for i in range(1, 6):
        cy, cx = rng.integers(8, 56, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 30
        labels[disk & (labels == 0)] = i
        image[disk] = (90, 60, 150)
    return image, labels


def _instances() -> AnnotatedDataset:
    samples = [Sample(*_blobs(i), None, f"blobs-{i}", f"g{i // 2}", 0.5) for i in range(10)]
    return AnnotatedDataset(tuple(samples), "instances", ("nucleus",))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from dlcore.train.api import train_model

    registry = tmp_path_factory.mktemp("registry")
    calls = []
    result = train_model(_instances(), spec=TrainSpec(task="instances", name="tiny-nuclei", **TINY),
                         out_registry=registry, progress=lambda *a: calls.append(a))
    return registry, result, calls


def test_package_written_and_loadable(base):
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    registry, result, calls = base
    assert result.package_path == registry / "tiny-nuclei"
    assert not isinstance(load_description(result.package_path / "rdf.yaml"), InvalidDescr)
    card = (result.package_path / "README.md").read_text()
    assert "held-out test" in card and "mean_ap" in card
    rdf_cfg = __import__("yaml").safe_load((result.package_path / "rdf.yaml").read_text())["config"]["dlcore"]
    assert rdf_cfg["kind"] == "instances" and rdf_cfg["metrics"]["test"]["mean_ap"] == result.metrics["test"]["mean_ap"]
    for name in ("report.md", "report.html", "learning_curves.png", "overlays.png", "metrics.json"):
        assert (result.report_path.parent / name).is_file(), name
    assert ("train", 2, 2) in calls and ("evaluate", 1, 1) in calls
    registry_mod = pytest.importorskip("dlcore.models.registry")
    from dlcore.config import Config

    task = registry_mod.load_task("tiny-nuclei", {"device": "cpu"}, config=Config(models_dir=registry))
    labels = task.predict([_blobs(99)[0]])[0]
    assert labels.shape == (64, 64)


def test_transfer_learning_freezes_first_stages(base):
    import torch

    from dlcore.train.api import train_model

    registry, first, _ = base
    spec = TrainSpec(task="instances", name="tiny-nuclei", freeze_stages=1, **{**TINY, "lr": 0.05})
    result = train_model(_instances(), spec=spec, out_registry=registry, base_model="tiny-nuclei")
    assert result.package_path == registry / "tiny-nuclei-v2" and result.metrics["version"] == "2.0.0"
    before = torch.load(first.package_path / "weights.pt", weights_only=True)
    after = torch.load(result.package_path / "weights.pt", weights_only=True)
    stage0 = [k for k in before if k.startswith("encoder_stages.0.")]
    stage1 = [k for k in before if k.startswith("encoder_stages.1.") and before[k].is_floating_point()]
    assert stage0 and stage1
    assert all(torch.equal(before[k], after[k]) for k in stage0)  # frozen: weights and norm statistics
    assert any(not torch.equal(before[k], after[k]) for k in stage1)  # fine-tuned
    assert "first 1 encoder stage(s) frozen" in (result.package_path / "README.md").read_text()


def test_classification_with_kfold(tmp_path):
    from dlcore.train.api import train_model

    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        label = ("light", "dark")[i % 2]
        value = 200 if label == "light" else 60
        image = np.clip(rng.normal(value, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        samples.append(Sample(image, None, label, f"p{i}", f"g{i}", None))
    ds = AnnotatedDataset(tuple(samples), "classification", ("light", "dark"))
    spec = TrainSpec(task="classification", name="tiny-classifier", classifier_width=4, classifier_depth=2, k_folds=2,
                     **{**TINY, "patch_size": 32, "tile_size": 64, "test_fraction": 0.34})
    result = train_model(ds, spec=spec, out_registry=tmp_path)
    kfold = result.metrics["kfold"]
    assert kfold["k"] == 2 and len(kfold["folds"]) == 2 and "accuracy" in kfold["summary"]
    assert result.metrics["test"]["n"] == 4 and len(result.metrics["test"]["confusion_matrix"]) == 2
    assert (result.report_path.parent / "confusion_matrix.png").is_file()
    assert "2-fold cross-validation" in (result.package_path / "README.md").read_text()
    saved = json.loads((result.report_path.parent / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == result.metrics["test"]["accuracy"]


def test_refuses_empty_dataset_and_freeze_without_base(tmp_path):
    from dlcore.errors import InputError, ParameterError
    from dlcore.train.api import train_model

    with pytest.raises(InputError, match="no samples"):
        train_model(AnnotatedDataset((), "instances", ("nucleus",)),
                    spec=TrainSpec(task="instances", name="empty-model"), out_registry=tmp_path)
    with pytest.raises(ParameterError, match="base model"):
        train_model(_instances(), spec=TrainSpec(task="instances", name="x-model", freeze_stages=1), out_registry=tmp_path)
