"""Deep Learning > Export Annotated Dataset: the annotated images as an archive-ready zip on their dataset."""
from dlcore.omero import scripts as dls
from dlcore.omero import training

if __name__ == "__main__":
    client = dls.client(
        "Export_Annotated_Dataset.py",
        "Export the annotated regions of the selected Images (or of every image of the selected Datasets or "
        "Projects) for sharing or deposit in the BioImage Archive: OME-TIFF or OME-Zarr images, label masks "
        "from the ROIs (or image classes from tags), dataset.json, samples.csv, a README, and the archive "
        "metadata mifa.json, rembi.json and file_list.tsv, with who drew the ROIs and when, the provenance of "
        "automatic labels (Labels From Marker) and the images' tags and key-values. The facility's archive "
        "YAML, attached in OMERO, makes it submission-ready. One zip attached to the dataset, or, for large "
        "sets, a folder in the node's export folder. The same dataset Train Model would learn from.",
        *dls.target_params(), *training.annotation_params(3), *training.export_params(9),
    )
    dls.run_script_file(client, training.export_script)
