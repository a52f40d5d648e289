"""Deep Learning > Run Model: apply an installed model or pipeline to the selected images.

Results appear on each image: ROIs, a label image in the same dataset, a measurement table,
key-value pairs, tags and attached files; an image model (denoising, image translation) writes its
predicted image next to the source instead (uint16 by default, Output_Pixel_Type uint8 for 8 bits).  Running the same model again replaces its earlier results.
"""
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "Run_Model.py",
        "Apply a model or pipeline installed on this server to the selected Images (or every image of the "
        "selected Datasets or Projects). Results are written onto each image: outlines as ROIs, a label "
        "image next to it, a measurement table, key-value pairs and files. An image model (denoising, image "
        "translation) writes its predicted image next to each image instead, as uint16 (or uint8: Output_Pixel_Type; "
        "float32 cannot be stored in OMERO), with the scale and offset that give "
        "the predicted values back in its key-value pairs. Running the same model again replaces its earlier "
        "results; other results and your own annotations are left alone.",
        *dls.target_params(), *dls.model_params(3), *dls.run_option_params(5),
    )
    dls.run_script_file(client, dls.run_script)
