"""Prompt one image with many objects at once: the embedding is computed once, prompts are decoded in chunks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from promptsam.device import autocast, pick_device, resolve_precision
from promptsam.inference.preprocess import resize_longest_side, resized_shape, to_rgb255
from promptsam.models.sam.sam import Sam


@dataclass
class Prediction:
    """Per object: `masks` (N, M, H, W) bool at image resolution (None if not requested), `iou` (N, M) predicted
    IoU, `low_res_logits` (N, M, s/4, s/4) in the padded model frame (feed back as mask prompts)."""

    masks: np.ndarray | None
    iou: np.ndarray
    low_res_logits: np.ndarray


class SamPredictor:
    """Set an image once, then segment any number of prompted objects in it.

    Prompts are in pixel coordinates of the original image, (x, y). Each object may combine positive and
    negative points (label 1 / 0; label -1 pads lists of unequal length), a box (x1, y1, x2, y2; a NaN row means
    no box) and a low-resolution mask prompt (a NaN mask means none).
    """

    def __init__(self, model: Sam, *, device: str | torch.device = "auto", precision: str = "fp32") -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.embedding: torch.Tensor | None = None
        self.details: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Compute the embedding of an (H, W) or (H, W, 3) image of any dtype."""
        rgb = to_rgb255(image)
        self.original_size = rgb.shape[:2]
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)
        x = resize_longest_side(x, self.model.image_size)
        self.input_size = tuple(x.shape[-2:])
        with autocast(self.device, self.autocast_dtype):
            x = self.model.normalize(x)
            self.embedding = self.model.embed_images(x).float()
            details = self.model.embed_details(x)
            self.details = None if details is None else details.float()

    def _to_input_frame(self, coords: np.ndarray) -> torch.Tensor:
        h, w = self.original_size
        new_h, new_w = resized_shape((h, w), self.model.image_size)
        scale = np.array([new_w / w, new_h / h], dtype=np.float32)
        return torch.from_numpy(np.asarray(coords, dtype=np.float32) * scale)

    @torch.inference_mode()
    def predict(
        self,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_inputs: np.ndarray | None = None,
        multimask_output: bool = False,
        return_masks: bool = True,
        chunk_size: int = 64,
    ) -> Prediction:
        """Segment N objects: points (N, P, 2) + labels (N, P), boxes (N, 4), mask_inputs (N, s/4, s/4) logits."""
        if self.embedding is None:
            raise RuntimeError("call set_image before predict")
        if points is not None and point_labels is None:
            raise ValueError("points need point_labels (1 positive, 0 negative, -1 padding)")
        given = [a for a in (points, boxes, mask_inputs) if a is not None]
        n = len(given[0]) if given else 0
        coords = self._to_input_frame(points).to(self.device) if points is not None else None
        labels = (
            torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=self.device)
            if points is not None
            else None
        )
        box_t = (
            self._to_input_frame(np.asarray(boxes, np.float32).reshape(-1, 2, 2))
            .reshape(-1, 4)
            .to(self.device)
            if boxes is not None
            else None
        )
        mask_t = (
            torch.as_tensor(np.asarray(mask_inputs, np.float32), device=self.device)[:, None]
            if mask_inputs is not None
            else None
        )

        masks_out, iou_out, low_out = [], [], []
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            with autocast(self.device, self.autocast_dtype):
                low, iou = self.model.decode(
                    self.embedding,
                    points=(coords[sl], labels[sl]) if coords is not None else None,
                    boxes=box_t[sl] if box_t is not None else None,
                    mask_inputs=mask_t[sl] if mask_t is not None else None,
                    multimask_output=multimask_output,
                    image_details=self.details,
                )
            low, iou = low.float(), iou.float()
            if return_masks:
                masks_out.append((self.upscale_logits(low) > 0).cpu().numpy())
            iou_out.append(iou.cpu().numpy())
            low_out.append(low.cpu().numpy())
        m = 3 if multimask_output else 1
        s = self.model.image_size // 4
        h, w = self.original_size
        return Prediction(
            masks=(np.concatenate(masks_out) if masks_out else np.zeros((0, m, h, w), bool))
            if return_masks
            else None,
            iou=np.concatenate(iou_out) if iou_out else np.zeros((0, m), np.float32),
            low_res_logits=np.concatenate(low_out) if low_out else np.zeros((0, m, s, s), np.float32),
        )

    def upscale_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (N, M, s/4, s/4) -> logits at the original image size, as the official post-processing."""
        size = self.model.image_size
        x = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)
