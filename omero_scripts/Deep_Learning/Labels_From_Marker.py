"""Deep Learning > Labels From Marker: training labels derived from a marker (IHC, fluorescence) as ROIs.

The ROIs are named with their class, so Train Model (Class_Source = ROI name) learns from them as it does
from hand-drawn ones; a re-run replaces them.  When the marker is a stain of the selected brightfield image
itself (DAB), the ROIs go by default on a new haematoxylin-only rendering of it, in the same datasets
(Training_Image), so that the model learns from the routine stain instead of seeing the marker.
"""
from dlcore.omero import marker_labels
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "Labels_From_Marker.py",
        "Derive training labels from a marker instead of drawing them: a stain of the selected Images (DAB, by "
        "colour deconvolution), one of their channels, or a second image of the same section (a re-stain, a "
        "fluorescence scan) given by its ID and registered onto each selected image first. The marker is "
        "thresholded (Otsu's threshold, or yours) into 'positive' regions, split into objects, or used to name "
        "every nucleus 'positive' or 'negative'. The labels are written as ROIs named with their class (a re-run "
        "replaces them), with key-value pairs recording the marker, threshold and registration; train a model on "
        "them with Train Model (Class_Source = ROI name). When the marker is DAB (or eosin) of the selected image "
        "itself, the ROIs go on a new image beside it, in the same datasets: the region rendered as if stained "
        "with haematoxylin only, so the model learns to find the marker from the routine stain instead of seeing "
        "it (Training_Image; a re-run replaces that image too).",
        *dls.target_params(), *marker_labels.marker_label_params(3),
    )
    dls.run_script_file(client, marker_labels.marker_labels_script)
