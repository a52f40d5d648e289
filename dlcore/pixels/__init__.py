"""Pixel classification from a few labels: the seeds' machine-learning family, between the classical
pipeline and deep learning (ilastik's and QuPath's pixel classifier).

- :mod:`dlcore.pixels.features`: multiscale filter features (Gaussian, LoG, gradient, DoG, structure
  tensor and Hessian eigenvalues) per channel or per deconvolved stain, exact per tile;
- :mod:`dlcore.pixels.scribbles`: sparse labels (painted label images, GeoJSON, OMERO shapes) as a label image;
- :mod:`dlcore.pixels.training`: the random forest, its out-of-bag and held-out-stroke accuracy, the
  feature importances and the warnings;
- :mod:`dlcore.pixels.forest`: the forest as plain arrays (no pickle) and its compiled prediction;
- :mod:`dlcore.pixels.package`: the registry package (bioimage.io, with a TorchScript export from
  :mod:`dlcore.pixels.torch_graph`);
- :mod:`dlcore.pixels.task`: the engine's tasks (class map, probabilities, outlines; or one class as objects);
- :mod:`dlcore.pixels.local_data`, :mod:`dlcore.pixels.cli`, :mod:`dlcore.pixels.demo`: ``dlcore train
  --task pixels`` on local files, and the demo scribbles.
"""
