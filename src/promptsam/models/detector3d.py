"""The lesion prompter of promptsam's automatic 3D mode: a small 3D U-Net whose lesion map gives the first clicks.

None of the 3D SAMs (SAM-Med3D, M-SAM) can run without a click from the ground truth. promptsam adds this light
detector (our design, not in the papers): it maps a z-normalised volume at 1.5 mm to lesion logits; each connected
component of its thresholded map becomes a region of interest and a first click, its probability is M-SAM's first
mask prompt, and its mask is the reference the click simulator refines against (inference/clicks.py), so M-SAM runs
end to end without ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_lesion_detector(*, channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                          num_res_units: int = 1) -> nn.Module:
    """MONAI 3D U-Net (instance norm) from (B, 1, D, H, W) volumes to (B, 1, D, H, W) lesion logits."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units, norm="instance")
