"""Deep Learning > Classical Segmentation: nuclei by smoothing, threshold and watershed (no model needed)."""
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "Classical_Segmentation.py",
        "Find nuclei without deep learning: Gaussian smoothing, a two-class threshold computed once per "
        "slide, watershed to split touching nuclei, and removal of small objects. Works on H&E and IHC "
        "(haematoxylin) or on one channel of a fluorescence image. Results are written onto each image "
        "as for Run Model.",
        *dls.target_params(), *dls.task_params("nuclei-classical", 3), *dls.run_option_params(4),
    )
    dls.run_script_file(client, dls.run_script, task="nuclei-classical")
