"""Deep Learning > Train Image Model: a denoising, restoration or image-translation model from OMERO images.

The model goes into this server's model registry (Run Model lists it at once); its card and QC report
are attached to the images' dataset.
"""
from dlcore.omero import image_training
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "Train_Image_Model.py",
        "Train a network that predicts pixel values: Noise2Void denoising (n2v) from the noisy images alone, "
        "restoration (care) from pairs of low and high quality acquisitions of the same field, or image "
        "translation (translate), e.g. brightfield -> a fluorescence channel or H&E -> an IHC marker. Pairs come "
        "from two datasets (Source_Dataset, Target_Dataset: images matched by name) or from the channels of each "
        "image (Source_Channels, Target_Channels). Rectangle ROIs mark the regions to learn from (else a central "
        "crop of each image). Images are held out for a test against simple baselines; the model is installed on "
        "this server (Run Model lists it) and its card and QC report are attached to the images' dataset.",
        *dls.target_params(), *image_training.image_training_params(3),
    )
    dls.run_script_file(client, image_training.train_image_script)
