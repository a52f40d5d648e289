"""Objects as OMERO ROIs: one polygon per object, saved in batches, up to a per-image cap.

A whole slide can hold hundreds of thousands of nuclei; OMERO's viewers page ROIs (iviewer by 500)
and slow down beyond tens of thousands.  So at most ``cap`` objects (the configuration's
``roi_cap``, 5000 by default) become ROIs, in the order the tile engine finds them (row by row over
the slide); every object, with or without a ROI, is still in the label image and the table.

Each ROI's description is ``dlcore:<run key>:<run id>``: that is how a later run of the same task
finds and replaces these ROIs without touching anyone else's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dlcore.objects import ObjectRecord

ROI_BATCH = 500
DEFAULT_COLOR = (255, 230, 0)
ROI_MARKER = "dlcore:{run_key}:"


def roi_marker(run_key: str, run_id: str) -> str:
    """The description that tags a ROI with its run."""
    return ROI_MARKER.format(run_key=run_key) + run_id


def omero_color(rgb: tuple[int, int, int], alpha: int = 255) -> int:
    """OMERO's signed 32-bit RGBA integer for a colour."""
    r, g, b = (int(v) & 255 for v in rgb)
    value = (r << 24) | (g << 16) | (b << 8) | (alpha & 255)
    return value - (1 << 32) if value >= 1 << 31 else value


def points_text(polygon: Sequence[tuple[float, float]]) -> str:
    """A polygon's vertices as OMERO's ``"x,y x,y ..."`` text (two decimals)."""
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in polygon)


def object_roi(obj: ObjectRecord, image_id: int, *, marker: str, color: tuple[int, int, int] = DEFAULT_COLOR):
    """An unsaved ``RoiI`` holding the object's outline (a rectangle when the outline is degenerate)."""
    from omero.model import ImageI, PolygonI, RectangleI, RoiI
    from omero.rtypes import rdouble, rint, rstring

    roi = RoiI()
    roi.setImage(ImageI(image_id, False))
    roi.setName(rstring(f"{obj.class_name or 'object'} {obj.id}"))
    roi.setDescription(rstring(marker))
    if len(obj.polygon) >= 3:
        shape = PolygonI()
        shape.setPoints(rstring(points_text(obj.polygon)))
    else:
        x0, y0, x1, y1 = obj.bbox
        shape = RectangleI()
        shape.setX(rdouble(x0))
        shape.setY(rdouble(y0))
        shape.setWidth(rdouble(x1 - x0))
        shape.setHeight(rdouble(y1 - y0))
    if obj.class_name:  # a class is worth reading on the image; an id on each of thousands of shapes is clutter
        shape.setTextValue(rstring(obj.class_name))
    shape.setStrokeColor(rint(omero_color(color)))
    shape.setFillColor(rint(omero_color(color, alpha=0)))
    roi.addShape(shape)
    return roi


@dataclass
class RoiWriter:
    """Turns objects into ROIs and saves them in batches, up to ``cap`` per image.

    ``save(list_of_rois) -> list_of_saved_rois`` is the update service's ``saveAndReturnArray`` bound
    to the image's group; saved ROI ids are kept in :attr:`saved_ids` so a failed run can delete them.
    """

    image_id: int
    marker: str
    cap: int
    save: object
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    saved_ids: list[int] = field(default_factory=list)
    skipped: int = 0

    def write(self, objects: Sequence[ObjectRecord]) -> list[int]:
        """Save ROIs for ``objects`` (those under the cap); return the ROI id per object, -1 for none."""
        room = max(0, self.cap - len(self.saved_ids))
        chosen = objects[:room]
        self.skipped += len(objects) - len(chosen)
        ids: list[int] = []
        for start in range(0, len(chosen), ROI_BATCH):
            batch = [
                object_roi(o, self.image_id, marker=self.marker, color=self.colors.get(o.class_name or "", DEFAULT_COLOR))
                for o in chosen[start:start + ROI_BATCH]
            ]
            saved = self.save(batch)
            new = [int(r.getId().getValue()) for r in saved]
            self.saved_ids.extend(new)
            ids.extend(new)
        return ids + [-1] * (len(objects) - len(chosen))

    def cap_note(self) -> str:
        """What the cap did, in words for the run's message and key-value pairs."""
        if not self.skipped:
            return f"{len(self.saved_ids)} ROIs (every object)"
        return (f"{len(self.saved_ids)} ROIs for the first {len(self.saved_ids)} of {len(self.saved_ids) + self.skipped} "
                f"objects (cap roi_cap={self.cap}: OMERO's viewers slow down beyond this); every object is in the "
                "label image and the table")
