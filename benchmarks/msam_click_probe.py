"""Does an M-SAM model follow the click? One first-round click at each of several lesions of each dev volume.

    .venv/bin/python benchmarks/msam_click_probe.py --model RUN/model.pt [--threads 1] [--lesions 6] [--results NAME]

For each dev volume the region is the paper's (128³ on the 1.5 mm grid, centred on the ground truth's bounding box).
One positive click (round 1, zero mask prompt) goes at the central voxel of each of its `--lesions` largest lesions
(26-connected components) and at one background brain voxel. Per click: the output's size, Dice with the clicked
lesion alone, the share of the output within 10 voxels (15 mm) of the click, and the logit at the click. Per volume:
how much the outputs of different clicks differ (mean over pairs of |A xor B| / |A or B|): ~0 means the click is
ignored. Writes benchmarks/results/msam_click_probe.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

CASES = (("ms_lesion_3d", "patient07"), ("ms_lesion_3d", "patient19"), ("brats2021_edema_3d", "BraTS2021_01646"))
NEAR = 10.0  # voxels on the 1.5 mm grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="M-SAM model file (promptsam train msam)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lesions", type=int, default=6, help="largest lesions clicked per volume")
    parser.add_argument("--results", default="msam_click_probe", help="results file name under benchmarks/results")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    torch.set_num_threads(args.threads)
    from common import print_table, write_results
    from promptsam.data.splits import default_data_root
    from promptsam.data.volumes import crop_or_pad, list_volume_cases, normalize_intensity, roi_center
    from promptsam.inference.clicks import LOGIT_THRESHOLD
    from promptsam.methods.msam import MSAM, load_cases

    root = args.data or default_data_root()
    model = MSAM.load(args.model, device="cpu").eval()
    vcfg = model.config.volume
    rows, volumes = [], {}
    for dataset, name in CASES:
        sample = {s.name: s for s in list_volume_cases(root / dataset, "train")}[name]
        case = load_cases([sample], spacing=vcfg.spacing)[0]
        centre = roi_center(case.label)
        raw = crop_or_pad(case.image, centre, size=vcfg.size)[0]
        label = crop_or_pad(case.label, centre, size=vcfg.size)[0]
        x = torch.from_numpy(normalize_intensity(raw, modality=vcfg.modality))[None, None]
        components, _ = ndimage.label(label, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel())[1:]
        clicks = []
        for k in np.argsort(-sizes)[: args.lesions]:
            voxels = np.argwhere(components == k + 1)
            voxel = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]
            clicks.append((f"lesion of {sizes[k]} vox", voxel, components == k + 1))
        background = np.argwhere((raw > 0) & ~ndimage.binary_dilation(label, iterations=5))
        clicks.append(("background", background[len(background) // 2], None))
        outputs = []
        with torch.inference_mode():
            embedding, details = model.network.embed(x), model.network.embed_details(x)
            for what, voxel, lesion in clicks:
                coords = torch.tensor(voxel, dtype=torch.float32).view(1, 1, 3)
                low, _ = model.network.refine(embedding, coords, torch.tensor([[1]]), None, details)
                logits = F.interpolate(low.float(), size=x.shape[-3:], mode="trilinear", align_corners=False)[0, 0]
                pred = (logits > LOGIT_THRESHOLD).numpy()
                where = np.argwhere(pred)
                near = float(np.mean(np.sqrt(((where - voxel) ** 2).sum(1)) <= NEAR)) if len(where) else 0.0
                lesion_dice = (2 * float((pred & lesion).sum()) / (pred.sum() + lesion.sum())
                               if lesion is not None else float("nan"))
                outputs.append(pred)
                rows.append({"volume": name, "click": what, "output voxels": int(pred.sum()),
                             "dice clicked lesion": lesion_dice, "share near click": near,
                             "logit at click": float(logits[tuple(voxel)])})
        changes = [float((a ^ b).sum()) / max(float((a | b).sum()), 1.0)
                   for i, a in enumerate(outputs) for b in outputs[i + 1:]]
        volumes[name] = {"lesions": int(len(sizes)), "mean_pairwise_change": float(np.mean(changes))}
        rows.append({"volume": name, "click": "(mean pairwise change between clicks)",
                     "output voxels": "", "dice clicked lesion": float(np.mean(changes))})
    print_table(rows, ["volume", "click", "output voxels", "dice clicked lesion", "share near click",
                       "logit at click"])
    write_results(args.results, {"model": str(args.model), "rows": rows, "volumes": volumes})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
