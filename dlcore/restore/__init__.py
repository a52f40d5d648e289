"""Prediction models: networks that predict new pixel values (denoising, restoration, image translation).

The models side of the engine's ``image`` task kind (issue 14):

- :mod:`.masking`: Noise2Void blind-spot masking (Krull, Buchholz and Jug, CVPR 2019);
- :mod:`.data`: noisy-image folders and paired folders, per-image percentile normalisation, splits;
- :mod:`.losses`: L1, MSE, SSIM and L1 + SSIM, and the masked loss of Noise2Void;
- :mod:`.training`: :func:`~.training.train_image_model` (modes ``n2v``, ``care``, ``translate``);
- :mod:`.inference`: running a trained network on whole images (padding to its divisor);
- :mod:`.transforms`: how the network's input is made from a slide window (channels, or a stain by
  colour deconvolution);
- :mod:`.metrics`: QC figures in the style of ZeroCostDL4Mic (PSNR, SSIM, Pearson r, NRMSE, error maps,
  baselines) and the synthetic-noise check of Noise2Void;
- :mod:`.report`: the QC files in a package's ``report/`` (metrics CSV, error maps, learning curves);
- :mod:`.config`: the ``config.dlcore`` block of a prediction package (pure Python);
- :mod:`.package`: the bioimage.io package (``kind: image_prediction``) and its registration;
- :mod:`.task`: :class:`~.task.ImagePredictionTask`, what the tile engine runs;
- :mod:`.cli`: ``dlcore train DATASET --task n2v|care|translate``.

Built on PyTorch and dlcore's own U-Net (:class:`dlcore.models.architectures.UNet2D`) with MONAI's SSIM
loss.  CAREamics (the maintained home of Noise2Void and CARE in PyTorch) was considered and not used:
it requires torchvision <= 0.26, which pins torch 2.11 (no torchvision build imports beside the torch
2.13 CPU build dlcore uses), plus lightning and bioimageio.core.  The methods follow its papers:
Noise2Void's blind-spot masking and CSBDeep's percentile normalisation (1 and 99.8 %).

Nothing here is imported by ``import dlcore``; torch is imported inside the functions that need it.
"""
