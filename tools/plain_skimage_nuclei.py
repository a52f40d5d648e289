"""The benchmark's reference: nuclei-classical's recipe written the way a user would, in plain
scikit-image on the whole image in memory (no tiles, no tissue detection, no pyramid).

    python tools/plain_skimage_nuclei.py SLIDE.ome.tif OUT.csv

Reads level 0 whole, separates haematoxylin (``skimage.color.rgb2hed``), smooths (sigma 3), takes
Otsu's threshold, fills holes, seeds a watershed on the distance transform (``peak_local_max``,
min_distance 6), removes objects under 60 pixels and writes one CSV row per nucleus (area, centroid,
mean RGB).  Prints one JSON line: seconds, peak RSS, objects.  Used side by side with
``dlcore run --task nuclei-classical --no-tissue-detection`` (see BENCHMARKS.md).
"""
from __future__ import annotations

import csv
import json
import resource
import sys
import time


def main(slide: str, out: str) -> None:
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi
    from skimage import color, filters, measure, morphology, segmentation
    from skimage.feature import peak_local_max

    start = time.perf_counter()
    image = tifffile.imread(slide, level=0)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    hematoxylin = color.rgb2hed(image[..., :3])[..., 0]
    smoothed = filters.gaussian(hematoxylin, sigma=3)
    mask = ndi.binary_fill_holes(smoothed > filters.threshold_otsu(smoothed))
    distance = ndi.distance_transform_edt(mask)
    components, _ = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=6, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    labels = morphology.remove_small_objects(labels, 60)
    table = measure.regionprops_table(labels, intensity_image=image[..., :3],
                                      properties=("label", "area", "centroid", "intensity_mean"))
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.keys())
        writer.writerows(zip(*table.values()))
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "objects": int(len(table["label"])),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
