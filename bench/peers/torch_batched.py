"""Peer: eager PyTorch, the whole grid as one batch.

Runs in bench/.venvs/torch (torch 2.13.0 CPU build). The VGG16 base is built
from ``F.conv2d`` / ``F.max_pool2d`` on the h5 arrays (HWIO -> OIHW), only up to
the target layer. Only the input requires grad; parameters do not.
``torch.set_num_threads(2)`` unless --threads says otherwise.

Modes
    --mode f32    float32, channels_last memory format (input and weights)
    --mode bf16   channels_last + ``torch.autocast("cpu", dtype=torch.bfloat16)``;
                  the image, the loss and the gradient normalization stay float32

Image i ascends filter i: loss_i = mean over H, W of channel i of its output;
the gradient of the sum of the losses is normalized per image (RMS + 1e-5).

    bench/.venvs/torch/bin/python bench/peers/torch_batched.py --weights weights/vgg16_imagenet_notop.h5 --mode f32

Speaks the line protocol of bench/peers/_protocol.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _protocol import Worker, convs_up_to, deprocess, load_h5_weights, start_images  # noqa: E402


class TorchBatched(Worker):
    impl = "torch_batched"

    def __init__(self, weights, mode, threads):
        self.weights = weights
        self.mode = mode
        self.nthreads = threads

    def setup(self):
        import torch

        self.torch = torch
        torch.set_num_threads(self.nthreads)
        self.F = torch.nn.functional
        self.params = {}
        for name, (w, b) in load_h5_weights(self.weights).items():
            wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))  # OIHW
            wt = wt.contiguous(memory_format=torch.channels_last).requires_grad_(False)
            self.params[name] = (wt, torch.from_numpy(b).requires_grad_(False))
        return {"torch": torch.__version__, "numpy": np.__version__}

    def threads(self):
        return self.torch.get_num_threads()

    def forward(self, x, layer):
        F = self.F
        pools = 0
        for name, _cin, _cout, pools_before in convs_up_to(layer):
            while pools < pools_before:
                x = F.max_pool2d(x, 2, 2)
                pools += 1
            w, b = self.params[name]
            x = F.relu(F.conv2d(x, w, b, padding=1))
        return x

    def grid(self, layer, n, size, steps, seed):
        torch = self.torch
        x0 = start_images(n, size, seed)  # NHWC
        # NCHW logical shape, NHWC in memory: channels_last without a copy.
        x = torch.from_numpy(x0).permute(0, 3, 1, 2)
        assert x.is_contiguous(memory_format=torch.channels_last)
        idx = torch.arange(n)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode == "bf16")

        def losses(x):
            with autocast:
                out = self.forward(x, layer)
            return out[idx, idx].float().mean(dim=(1, 2))  # (n,): channel i of image i

        for _ in range(steps):
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(losses(x).sum(), x)
            with torch.no_grad():
                g = g / (g.square().mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
                x = (x.detach() + g * 1.0).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            loss = losses(x)  # the final loss, on the final image
        final = x.permute(0, 2, 3, 1).numpy()
        return deprocess(final), loss.numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="Keras VGG16 notop h5 file")
    p.add_argument("--mode", choices=("f32", "bf16"), default="f32")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    a = p.parse_args()
    TorchBatched(a.weights, a.mode, a.threads).serve()


if __name__ == "__main__":
    main()
