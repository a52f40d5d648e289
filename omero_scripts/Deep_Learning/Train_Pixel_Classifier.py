"""Deep Learning > Train Pixel Classifier: an ilastik-style pixel classifier from a few ROIs per class.

The classifier goes into this server's model registry (Run Model lists it at once); its model card
and feature importances are attached to the images' dataset.
"""
from dlcore.omero import pixel_training
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "Train_Pixel_Classifier.py",
        "Train a pixel classifier (a random forest on multiscale filter features, as in ilastik or QuPath) from "
        "a few labels: polygons, rectangles, ellipses, lines, polylines, points or masks drawn on the selected "
        "Images (or on images of the selected Datasets or Projects), their class given by the ROI's name, the "
        "shape's comment or a tag on the ROI. Label every class, the background too. Only the regions around "
        "the ROIs are read. The classifier is installed on this server (Run Model lists it) with its "
        "accuracy on held-out strokes in its card, which is attached to the images' dataset.",
        *dls.target_params(), *pixel_training.pixel_training_params(3),
    )
    dls.run_script_file(client, pixel_training.train_pixels_script)
