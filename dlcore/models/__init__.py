"""dlcore's model registry and deep-learning tasks.

- :mod:`dlcore.models.architectures`: the networks (plain PyTorch);
- :mod:`dlcore.models.package`: writing bioimage.io packages (rdf.yaml format 0.5);
- :mod:`dlcore.models.registry`: listing, validating, installing, removing and loading packages;
- :mod:`dlcore.models.tasks`: the tile-engine tasks that run a loaded model on slides;
- :mod:`dlcore.models.device`: choosing the device once.

Nothing here imports torch at import time: listing models must stay light (OMERO parses scripts).
"""
