"""Deep Learning > Export Annotated Dataset: the annotated images as an archive-ready zip on their dataset."""
from dlcore.omero import scripts as dls
from dlcore.omero import training

if __name__ == "__main__":
    client = dls.client(
        "Export_Annotated_Dataset.py",
        "Export the annotated regions of the selected Images (or of every image of the selected Datasets or "
        "Projects) for sharing or deposit: OME-TIFF images, OME-TIFF label masks from the ROIs (or image "
        "classes from tags), dataset.json, samples.csv and a README, in one zip attached to the dataset. "
        "The same dataset Train Model would learn from.",
        *dls.target_params(), *training.annotation_params(3), *training.export_params(9),
    )
    dls.run_script_file(client, training.export_script)
