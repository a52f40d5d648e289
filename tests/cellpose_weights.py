"""A Cellpose 3 model file for tests: a randomly initialised CPnet saved in Cellpose's own format.

Run with the field-models environment's Python (it imports cellpose and torch)::

    python tests/cellpose_weights.py OUT [--seed N] [--nuclei] [--diam-mean D]

writes ``OUT`` exactly as Cellpose writes its models: ``CPnet([2, 32, 64, 128, 256], 3, sz=3,
max_pool=True, diam_mean=D).save_model(OUT)`` (that is ``torch.save(net.state_dict(), OUT)``: 313
tensors, about 26.6 MB, ``diam_mean`` and ``diam_labels`` stored as parameters), which is the backbone
``cellpose.models.CellposeModel`` builds and loads for cyto3, nuclei and user-trained models.

Without ``--nuclei`` the weights are PyTorch's random initialisation (seeded): Cellpose loads and runs
the file but finds no objects ("no seeds found").

With ``--nuclei`` the same file format holds a hand-set network that finds dark round objects (H&E
nuclei after Cellpose's greyscale conversion, ``channels=[0, 0]``, and 1/99 percentile normalisation:
nuclei near 0, pink background near 1).  What is changed, exactly:

1. every BatchNorm becomes the identity (weight 1, bias 0, running mean 0, running variance 1), every
   convolution and every style ``Linear`` (``full``) gets zero weights and biases: the random network is
   switched off, and only the connections below carry a signal (all on channel 0 unless said);
2. ``downsample.res_down_0.proj`` (1x1): channel 0 = ``1 - grey`` ("darkness" ``d``, bias 1, weight -1);
   ``res_down_1..3.proj``: channel 0 copied (weight 1), so ``xd[n]`` holds ``d`` max-pooled to 1/2^n;
   ``res_down_3.proj`` also gets bias 1 on channel 1, so the style vector (a normalised mean of ``xd[3]``)
   is finite; it reaches nothing because every ``full`` is zero;
3. ``upsample.res_up_n.proj`` (1x1): channel 0 copied (the coarser level's sum, upsampled by the network's
   nearest-neighbour upsampling); ``res_up_n.conv.conv_1`` (3x3): channel 0 += 3x3 mean of ``xd[n]``'s
   channel 0: so channel 0 of ``res_up_0`` is a multi-scale blurred darkness ``B`` that peaks inside each
   dark blob; ``res_up_0.conv.conv_1`` also writes the 3x3 mean of the full-resolution ``d`` to channel 6;
4. ``res_up_0.conv.conv_2`` (3x3): channel 1 = 3x3 mean of ``B`` (smoother ``S``);
   ``res_up_0.conv.conv_3`` (3x3): channels 2/3 = +/- central difference of ``S`` along Y, channels 4/5
   = +/- along X (two signs because the output block applies a ReLU first);
5. ``output`` (1x1 after BatchNorm+ReLU): flow Y = GAIN x (ch2 - ch3), flow X = GAIN x (ch4 - ch5), i.e.
   GAIN x grad S, pointing up the darkness bump, to the blob's centre; cell probability =
   PROB x (ch6 - 0.5): positive where the local darkness exceeds one half.

Cellpose's flow dynamics then gather the pixels of each dark blob in one sink, and each blob becomes one
mask.  GAIN and PROB are constants below, set so that the flows are of the size Cellpose's own are
(about 5 at an object's edge) on ``field_weights.he_like_image`` at ``diameter`` = the nuclei's diameter.
"""
from __future__ import annotations

import argparse
import sys

GAIN = 10.0
PROB = 12.0


def make_net(seed: int = 0, nuclei: bool = False, diam_mean: float = 17.0):
    """The CPnet (random, or the hand-set nuclei detector described in the module docstring)."""
    import torch
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(seed)
    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_mean)
    net.diam_labels.data[:] = diam_mean
    if nuclei:
        _set_nuclei(net)
    return net.eval()


def _set_nuclei(net) -> None:
    import torch
    from torch import nn

    box = torch.full((3, 3), 1.0 / 9)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.zero_()
                module.bias.zero_()
        down = net.downsample.down
        first = down.res_down_0.proj[1]
        first.weight[0, 0, 0, 0] = -1.0
        first.bias[0] = 1.0
        for n in (1, 2, 3):
            down[n].proj[1].weight[0, 0, 0, 0] = 1.0
        down.res_down_3.proj[1].bias[1] = 1.0
        for n, block in enumerate(net.upsample.up):
            block.proj[1].weight[0, 0, 0, 0] = 1.0
            block.conv.conv_1.conv[2].weight[0, 0] = box
        up0 = net.upsample.up.res_up_0
        up0.conv.conv_1.conv[2].weight[6, 0] = box
        up0.conv.conv_2.conv[2].weight[1, 0] = box
        grad3 = up0.conv.conv_3.conv[2].weight
        dy = torch.tensor([[0.0, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
        grad3[2, 1], grad3[3, 1], grad3[4, 1], grad3[5, 1] = dy, -dy, dy.T, -dy.T
        out = net.output[2]
        out.weight[0, 2, 0, 0], out.weight[0, 3, 0, 0] = GAIN, -GAIN
        out.weight[1, 4, 0, 0], out.weight[1, 5, 0, 0] = GAIN, -GAIN
        out.weight[2, 6, 0, 0] = PROB
        out.bias[2] = -0.5 * PROB


def write(path: str, seed: int = 0, nuclei: bool = False, diam_mean: float = 17.0) -> str:
    """Write the model file (Cellpose's ``CPnet.save_model``) and return its path."""
    make_net(seed, nuclei, diam_mean).save_model(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nuclei", action="store_true", help="hand-set weights that find dark round objects")
    parser.add_argument("--diam-mean", type=float, default=17.0)
    args = parser.parse_args(argv)
    print(write(args.out, args.seed, args.nuclei, args.diam_mean))
    return 0


if __name__ == "__main__":
    sys.exit(main())
