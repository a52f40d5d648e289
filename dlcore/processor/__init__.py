"""dlcore's OMERO processor extension: deep-learning jobs go to free GPU slots.

* :mod:`dlcore.processor.policy`: the decision (which scripts are deep learning, GPU slots);
  no OMERO import.
* :mod:`dlcore.processor.server`: ``DlcoreProcessorI``, omero-py's ``ProcessorI`` using it.
* :mod:`dlcore.processor.hook`: how a node's ``runProcessor.py`` ends up serving it.

``python -m dlcore.processor`` runs the processor server directly (what ``runProcessor.py`` does,
with dlcore's class), for sites that point their ``ProcessorTemplate`` at it.
"""
from __future__ import annotations
