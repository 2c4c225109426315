"""SAM draws one mask per point prompt over an image of any size: sliding windows, batched decoding, merging.

PromptNucSeg's inference (methods.md §3.4) with one change for speed: each object is decoded once, in the window
whose centre is nearest its point, instead of in every window that contains it; the paper's edge filter (drop
masks touching an inner window edge) then has no second copy to fall back on, so it is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from promptsam.device import autocast
from promptsam.inference.merge import box_nms, paint_crops
from promptsam.inference.prompts import point_prompts
from promptsam.inference.tiling import assign_points, tile
from promptsam.models.sam.prompt_encoder import PADDING
from promptsam.models.sam.sam import Sam


@dataclass
class Candidates:
    """Candidate masks, each cropped to its bounding box: `offsets` (N, 2) are the crops' (y, x) in the image."""

    crops: list[np.ndarray]
    offsets: np.ndarray
    scores: np.ndarray
    prompt_index: np.ndarray

    def boxes(self) -> np.ndarray:
        """(x1, y1, x2, y2) boxes, inclusive, in image pixels."""
        if not self.crops:
            return np.zeros((0, 4), np.float32)
        sizes = np.array([c.shape for c in self.crops])
        y, x = self.offsets[:, 0], self.offsets[:, 1]
        return np.stack([x, y, x + sizes[:, 1] - 1, y + sizes[:, 0] - 1], axis=1).astype(np.float32)


def _crop_to_box(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], (int(rows[0]), int(cols[0]))


@torch.inference_mode()
def segment_points(
    sam: Sam,
    image: np.ndarray,
    points: np.ndarray,
    *,
    overlap: int = 64,
    num_negatives: int = 1,
    negative_min_distance: float = 0.0,
    also_without_negatives: bool = False,
    chunk_size: int = 64,
    window_batch: int = 4,
    autocast_dtype: torch.dtype | None = None,
    mask_threshold: float = 0.0,
) -> Candidates:
    """Candidate masks for (N, 2) (x, y) `points` in an (H, W, 3) 0-255 image, one SAM window of sam.image_size.

    Negatives are the `num_negatives` nearest other points (PromptNucSeg's K) at least `negative_min_distance`
    away (0: the paper; more skips a detector's duplicate point inside the same nucleus); with
    `also_without_negatives` every object is decoded a second time with its negatives replaced by padding, and both
    candidates are kept. A pixel belongs to a mask where its upsampled logit exceeds `mask_threshold` (SAM: 0).
    """
    device = sam.device
    size = sam.image_size
    h, w = image.shape[:2]
    padded = np.zeros((max(h, size), max(w, size), 3), np.float32)
    padded[:h, :w] = image
    corners = tile(padded.shape[:2], size=size, overlap=overlap)
    owner = assign_points(points, corners, size)
    coords, labels = point_prompts(points.astype(np.float32), points.astype(np.float32), num_negatives,
                                   min_distance=negative_min_distance)
    variants = [labels]
    if also_without_negatives and num_negatives > 0:
        bare = labels.copy()
        bare[:, 1:] = PADDING
        variants.append(bare)

    crops, offsets, scores, index = [], [], [], []
    busy = [t for t in range(len(corners)) if (owner == t).any()]
    for start in range(0, len(busy), window_batch):
        group = busy[start : start + window_batch]
        batch = np.stack([padded[y : y + size, x : x + size] for y, x in corners[group]])
        x_in = sam.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device))
        with autocast(device, autocast_dtype):
            embeddings = sam.embed_images(x_in)
            details = sam.embed_details(x_in)
        # all prompts of the group's windows are decoded together, each reading its own window's embedding
        members = [np.flatnonzero(owner == t) for t in group]
        ids_all = np.concatenate(members)
        window_of = np.repeat(np.arange(len(group)), [len(m) for m in members])
        origin = corners[group][window_of]  # (y0, x0) of each prompt's window
        shift = origin[:, ::-1].astype(np.float32)  # as (x0, y0)
        for variant in variants:
            for c in range(0, len(ids_all), chunk_size):
                part = slice(c, c + chunk_size)
                ids, windows = ids_all[part], window_of[part]
                pts = torch.from_numpy(coords[ids] - shift[part][:, None]).to(device)
                lbl = torch.from_numpy(variant[ids]).to(device)
                window = torch.from_numpy(windows).to(device)
                with autocast(device, autocast_dtype):
                    low, iou = sam.decode(embeddings, points=(pts, lbl), image_index=window, image_details=details)
                logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)[:, 0]
                masks = (logits > mask_threshold).cpu().numpy()
                for m, s, i, (y0, x0) in zip(masks, iou[:, 0].float().cpu().numpy(), ids, origin[part], strict=True):
                    m = m[: max(0, h - y0), : max(0, w - x0)]  # drop the zero padding beyond the image
                    cropped = _crop_to_box(m)
                    if cropped is None:
                        continue
                    crops.append(cropped[0])
                    offsets.append((cropped[1][0] + y0, cropped[1][1] + x0))
                    scores.append(s)
                    index.append(i)
    return Candidates(
        crops=crops,
        offsets=np.array(offsets, np.int64).reshape(-1, 2),
        scores=np.array(scores, np.float32),
        prompt_index=np.array(index, np.int64),
    )


def merge_candidates(
    candidates: Candidates, shape: tuple[int, int], *, nms_iou: float = 0.5, min_area: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """PromptNucSeg's merge: best candidate per prompt, box NMS, paint by ascending score.

    Returns the uint32 instance map and, per instance id k (1..K), the index of the candidate painted as k.
    """
    n = len(candidates.crops)
    if n == 0:
        return np.zeros(shape, np.uint32), np.zeros(0, np.int64)
    order = np.lexsort((-candidates.scores, candidates.prompt_index))
    first = np.ones(n, bool)
    first[1:] = candidates.prompt_index[order][1:] != candidates.prompt_index[order][:-1]
    best = order[first]
    keep = best[box_nms(candidates.boxes()[best], candidates.scores[best], iou_threshold=nms_iou)]
    labels, painted = paint_crops(
        shape,
        [candidates.crops[i] for i in keep],
        candidates.offsets[keep],
        candidates.scores[keep],
        min_area=min_area,
    )
    return labels, keep[painted]
