"""Deep Learning > Train Model: a new model from the ROIs and tags on the selected images.

The model goes into this server's model registry (Run Model lists it); its QC report and model card
are attached to the images' dataset.
"""
from dlcore.omero import scripts as dls
from dlcore.omero import training

if __name__ == "__main__":
    client = dls.client(
        "Train_Model.py",
        "Train a segmentation or classification model from your annotations: ROIs drawn on the selected "
        "Images (or every image of the selected Datasets or Projects), their class given by the ROI's name, "
        "a tag on the ROI, or a tag on the image. Start from an installed model (transfer learning) or from "
        "scratch. Images are split into training, validation and a held-out test set; the new model is "
        "installed on this server with its test figures in its card, and the QC report is attached to the "
        "images' dataset.",
        *dls.target_params(), *training.annotation_params(3), *training.training_params(9),
    )
    dls.run_script_file(client, training.train_script)
