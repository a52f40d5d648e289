"""Deep Learning > QC Slides: find what makes parts of the selected slides unusable, before analysing them.

Each image gets key-value pairs (verdict, each artefact's share of the tissue), tags (QC pass/warn/fail,
QC: <artefact>) and the QC mask, overview and report as attachments; each dataset gets a table with one row
per image.  Checking again replaces the earlier QC.
"""
from dlcore.omero import qc as dlqc
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "QC_Slides.py",
        "Quality control of the selected Images (or every image of the selected Datasets or Projects) before "
        "analysis: finds out-of-focus regions, pen ink, tissue folds, air bubbles, coverslip edges and pale "
        "(under-stained) tissue, and judges the staining. Each image gets a verdict (pass, warn or fail) as "
        "key-value pairs and tags, with the QC mask, an overview picture and the full report attached; each "
        "dataset gets a table with one row per image. Checking again replaces the earlier QC.",
        *dls.target_params(), *dlqc.qc_params(3),
    )
    dls.run_script_file(client, dlqc.qc_script)
