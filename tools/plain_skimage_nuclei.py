"""The benchmark's reference: nuclei-classical's recipe written the way a user would, in plain numpy,
scipy and scikit-image on the whole image in memory (no tiles, no tissue detection, no pyramid, no
outlines).

    python tools/plain_skimage_nuclei.py SLIDE.ome.tif OUT.csv PROVENANCE.json

It does dlcore's steps with the values dlcore chose for this slide, read from a ``dlcore run``'s
``provenance.json`` (``--no-tissue-detection``, so both see the same pixels): optical density
``-log10((I + 1) / 256)``, unmixing with the slide's stain matrix (negative amounts set to 0), a
Gaussian of ``sigma``, minus a grey opening of the background radius, the threshold, holes filled,
a watershed from ``peak_local_max`` seeds on the distance transform (``min_distance``), seedless
components kept whole, then objects under ``min_size`` and over ``max_object_pixels`` removed, and
one CSV row per nucleus (area, centroid, mean RGB).  Prints one JSON line: seconds, peak RSS,
objects.  Level 0 must be the working resolution (the demo slide's 0.5 µm/px is).  Used side by side
with ``dlcore run nuclei-classical --no-tissue-detection`` (see BENCHMARKS.md).
"""
from __future__ import annotations

import csv
import json
import resource
import sys
import time


def main(slide: str, out: str, provenance: str) -> None:
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi
    from skimage import measure, morphology, segmentation
    from skimage.feature import peak_local_max

    task = json.loads(open(provenance).read())["task"]
    p = task["parameters"]
    start = time.perf_counter()
    image = tifffile.imread(slide, level=0)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    rgb = image[..., :3]
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    vectors = np.asarray(p["stain_matrix"], dtype=np.float64)
    unmixing = np.linalg.inv(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    hematoxylin = np.maximum(od @ unmixing, 0).astype(np.float32)[..., 0]
    smoothed = ndi.gaussian_filter(hematoxylin, p["sigma"])
    size = 2 * task["background_radius_px"] + 1
    smoothed = smoothed - ndi.grey_opening(smoothed, size=(size, size))
    mask = ndi.binary_fill_holes(smoothed > p["threshold"])
    distance = ndi.distance_transform_edt(mask)
    components, _ = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=p["min_distance"], labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    orphans = mask & (labels == 0)
    labels[orphans] = components[orphans] + len(peaks)
    labels = morphology.remove_small_objects(labels, max_size=p["min_size"] - 1)  # keeps >= min_size
    sizes = np.bincount(labels.ravel())
    too_large = sizes > task["max_object_pixels"]
    too_large[0] = False
    labels[too_large[labels]] = 0
    table = measure.regionprops_table(labels, intensity_image=rgb, properties=("label", "area", "centroid", "intensity_mean"))
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.keys())
        writer.writerows(zip(*table.values()))
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "objects": int(len(table["label"])),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:4])
