"""What the OMERO training scripts share about the model they add to the node's registry.

A training script (Train_Pixel_Classifier, Train_Image_Model) checks the new model's name before any
pixel is read (:func:`new_model_key`: a name of a shared model or of another user's model is
refused, a name the caller used before gets a new version), registers the package with
``owner.json`` (:func:`dlcore.omero.model_access.owner_for_training`), so Run_Model lists it at
once for the caller's group, and then attaches copies of its card and QC files to the images'
datasets (:func:`attached_or_removed`).  When attaching fails, the registered package is removed
again: the script's Message says "Nothing was written", and that must be true.

Parse mode imports the scripts' modules, which import this one: nothing heavy at module level.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def image_label(image) -> str:
    """``Image:ID name``, how messages name an OMERO image."""
    return f"Image:{int(image.getId())} {image.getName()}"


def new_model_key(conn, name: str, config) -> str:
    """The registry name of a new model called ``name``, when the caller may add it (a new model, or a
    new version of one of theirs); ParameterError otherwise, before any work is done."""
    from dlcore.models.ownership import check_add_version
    from dlcore.models.registry import list_models, registry_name
    from dlcore.omero.model_access import caller_of

    key = registry_name(name)
    versions = [r for r in list_models(config) if r.name == key or (r.name.startswith(f"{key}-v")
                                                                      and r.name[len(key) + 2:].isdigit())]
    check_add_version(key, versions, caller_of(conn))
    return key


@contextmanager
def attached_or_removed(folder: Path, config) -> Iterator[Path]:
    """A scratch folder for the files to attach (removed afterwards); any failure inside the block
    removes the registered package ``folder`` too, then propagates.

    Use::

        with attached_or_removed(folder, config) as scratch:
            card = copy_as(folder / "README.md", scratch, f"{key}-{version}-model-card.md")
            attached = attach_files(conn, [(card, "text/markdown", "...")], datasets, NS)
    """
    base = getattr(config, "work_dir", None)
    scratch = Path(tempfile.mkdtemp(prefix="dlcore-attach-", dir=str(base) if base else None))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # the message says nothing was written: make it true
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def copy_as(source: Path, folder: Path, name: str) -> Path:
    """``source`` copied into ``folder`` as ``name`` (attachments are named after the model and version)."""
    target = Path(folder) / name
    shutil.copy2(source, target)
    return target


def zip_folder(folder: Path, out_stem: Path) -> Path:
    """``folder``'s content as ``out_stem.zip``."""
    return Path(shutil.make_archive(str(out_stem), "zip", root_dir=folder))


__all__ = ["image_label", "new_model_key", "attached_or_removed", "copy_as", "zip_folder"]
