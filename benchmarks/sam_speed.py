"""SAM speed: our encoders and decoder against the reference implementations, same weights, same run.

    python benchmarks/sam_speed.py [--quick] [--threads N] [--models vit_t,vit_b] [--sizes 1024,256] [--isolate]

Prints a table and writes benchmarks/results/sam_speed.json. Encoder latency is the median of >= 5 runs after a
warm-up, batch 1; achieved GFLOP/s divides the FLOPs our encoder executes (FlopCounterMode, with CPU attention
counted, see `count_gflops_sdpa`) by that latency and is compared with a measured matmul peak of this machine in the
same precision; "ref GFLOP" is the reference's count, which also includes its zero-padded window tokens. Decoder
throughput decodes N single-point prompts against one image embedding in one batched call; its FLOP floor is taken
at the peak of the precision promptsam's "auto" uses on this CPU (bf16 where avx512_bf16/AMX exist, else fp32), and
"x floor" times ours in that precision.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count_gflops, matmul_peak_gflops, median_seconds, print_table, write_results  # noqa: E402
from promptsam.device import autocast, cpu_supports_bf16  # noqa: E402
from promptsam.models import build_sam  # noqa: E402

warnings.filterwarnings("ignore")
CPU = torch.device("cpu")


def count_gflops_sdpa(fn) -> float:
    """`count_gflops` that also counts CPU scaled_dot_product_attention and oneDNN's fused conv/linear ops
    (FlopCounterMode knows none of these CPU kernels)."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

    def sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def weight_shape(args: tuple) -> list[int]:
        # plain overload: (x, weight, bias, ...); `.binary` overload: (x, other, weight, bias, ...)
        third = args[2]
        return list(third) if isinstance(third, list | tuple) and len(third) >= 2 else list(args[1])

    def fused_linear(x, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(out_shape) * x[-1]

    def fused_conv(x, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(list(x), weight_shape((x, *args)), list(out_shape))

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = fused_linear
        mapping[torch.ops.mkldnn._convolution_pointwise] = fused_conv
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def reference_encoder(name: str, image_size: int) -> torch.nn.Module:
    """The reference implementation's encoder for `name` at `image_size`."""
    if name == "vit_b":
        from segment_anything.modeling import ImageEncoderViT

        return ImageEncoderViT(
            depth=12,
            embed_dim=768,
            img_size=image_size,
            mlp_ratio=4,
            num_heads=12,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            out_chans=256,
            norm_layer=torch.nn.LayerNorm,
        )
    from mobile_sam.modeling import TinyViT

    return TinyViT(
        img_size=image_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def run_reference(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference forward; MobileSAM's TinyViT hard-codes a 64x64 token grid, so its last reshape is redone here."""
    if not hasattr(ref, "layers"):
        return ref(x)
    y = ref.patch_embed(x)
    for layer in ref.layers:
        y = layer(y)
    grid = x.shape[-1] // 16
    return ref.neck(y.view(y.shape[0], grid, grid, -1).permute(0, 3, 1, 2))


def load_resized(ref: torch.nn.Module, ours_encoder: torch.nn.Module, image_size: int) -> None:
    """Copy our encoder weights into the reference, resizing the 1024-shaped position tables where needed."""
    from promptsam.models.sam.image_encoder import resize_pos_embed

    state = ours_encoder.state_dict()
    target = ref.state_dict()
    for key, value in state.items():
        if key.endswith("pos_embed") and value.shape != target[key].shape:
            state[key] = resize_pos_embed(value, target[key].shape[1:3])
        elif "rel_pos" in key and value.shape != target[key].shape:
            state[key] = torch.nn.functional.interpolate(
                value.T[None], size=target[key].shape[0], mode="linear"
            )[0].T
    ref.load_state_dict(state, strict=True)


def encoder_rows(names: list[str], sizes: list[int], repeats: int, peaks: dict, *, isolate: bool = False,
                 threads: int = 2) -> list[dict]:
    """One row per (encoder, input size); with `isolate` each row runs in a fresh process (see `isolated_row`)."""
    rows = []
    for name in names:
        for size in sizes:
            if isolate:
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    rows.append(pool.apply(isolated_row, (name, size, repeats, peaks, threads)))
            else:
                rows.append(encoder_row(name, size, repeats, peaks))
            print(rows[-1], flush=True)
    return rows


def isolated_row(name: str, size: int, repeats: int, peaks: dict, threads: int) -> dict:
    """`encoder_row` in a fresh process that first runs the same 2048x2048 matmuls as the peak measurement (so the
    allocator starts as in the parent), without the earlier rows' large activations in its heap."""
    torch.set_num_threads(threads)
    matmul_peak_gflops(torch.float32)
    return encoder_row(name, size, repeats, peaks)


def encoder_row(name: str, size: int, repeats: int, peaks: dict) -> dict:
    """Our encoder against the reference's, same random weights, one process: latency, FLOPs, share of peak.

    The models are built outside inference mode, as users build them: parameters created in inference mode are
    inference tensors, whose derived weights (folded BatchNorm, attention masks) promptsam does not cache.
    """
    ours = build_sam(name, image_size=size).eval()
    ref = reference_encoder(name, size).eval()
    load_resized(ref, ours.image_encoder, size)
    with torch.inference_mode():
        return _time_encoders(name, size, ours, ref, repeats, peaks)


def _time_encoders(name: str, size: int, ours, ref, repeats: int, peaks: dict) -> dict:
    x = torch.randn(1, 3, size, size)
    gflop = count_gflops_sdpa(lambda: ours.image_encoder(x))
    ref_gflop = count_gflops_sdpa(lambda: run_reference(ref, x))
    t_ref = median_seconds(lambda: run_reference(ref, x), repeats=repeats)
    t_ours = median_seconds(lambda: ours.image_encoder(x), repeats=repeats)

    def ours_bf16():
        with autocast(CPU, torch.bfloat16):
            return ours.image_encoder(x)

    t_bf16 = median_seconds(ours_bf16, repeats=repeats)
    diff = (ours_bf16().float() - run_reference(ref, x)).abs().max().item()
    return {
        "model": name,
        "input": size,
        "GFLOP": gflop,
        "ref GFLOP": ref_gflop,
        "ref fp32 s": t_ref,
        "ours fp32 s": t_ours,
        "ours bf16 s": t_bf16,
        "speedup fp32": t_ref / t_ours,
        "speedup bf16": t_ref / t_bf16,
        "% fp32 peak": 100 * gflop / t_ours / peaks["fp32"],
        "% bf16 peak": 100 * gflop / t_bf16 / peaks["bf16"],
        "bf16 max abs diff": diff,
    }


def decoder_rows(counts: list[int], size: int, repeats: int, peaks: dict) -> list[dict]:
    """Mask decoder rows; the models are built outside inference mode (see `encoder_row`)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    ours = build_sam("vit_t", image_size=size).eval()
    grid = size // 16
    ref_pe = PromptEncoder(
        embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
    ).eval()
    ref_dec = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    ).eval()
    ref_pe.load_state_dict(ours.prompt_encoder.state_dict())
    ref_dec.load_state_dict(ours.mask_decoder.state_dict())
    with torch.inference_mode():
        return _time_decoders(counts, size, ours, ref_pe, ref_dec, repeats, peaks)


def _time_decoders(counts: list[int], size: int, ours, ref_pe, ref_dec, repeats: int, peaks: dict) -> list[dict]:
    grid = size // 16
    emb = torch.randn(1, 256, grid, grid)
    rows = []
    for n in counts:
        pts = torch.rand(n, 1, 2) * size
        lbl = torch.ones(n, 1, dtype=torch.int64)

        def ref_call():
            sparse, dense = ref_pe(points=(pts, lbl), boxes=None, masks=None)
            return ref_dec(emb, ref_pe.get_dense_pe(), sparse, dense, False)

        def ours_call(dtype=None):
            with autocast(CPU, dtype):
                return ours.decode(emb, points=(pts, lbl), multimask_output=False)

        gflop = count_gflops(ref_call)
        t_ref = median_seconds(ref_call, repeats=repeats)
        t_ours = median_seconds(ours_call, repeats=repeats)
        t_bf16 = median_seconds(lambda: ours_call(torch.bfloat16), repeats=repeats)
        # the floor in the precision promptsam runs on this CPU (precision "auto": bf16 only where it is native)
        native = "bf16" if cpu_supports_bf16() else "fp32"
        t_native = t_bf16 if native == "bf16" else t_ours
        floor = gflop / peaks[native]
        rows.append(
            {
                "input": size,
                "prompts": n,
                "GFLOP": gflop,
                "ref fp32 s": t_ref,
                "ours fp32 s": t_ours,
                "ours bf16 s": t_bf16,
                "speedup bf16": t_ref / t_bf16,
                "auto precision": native,
                "floor s": floor,
                "x floor": t_native / floor,
                "prompts/s": n / t_native,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 256 input only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="vit_t,vit_b", help="comma-separated encoders to time")
    parser.add_argument("--sizes", default=None, help="comma-separated input sizes (default 1024,256)")
    parser.add_argument("--no-decoder", action="store_true", help="skip the mask-decoder rows")
    parser.add_argument("--isolate", action="store_true",
                        help="time each encoder row in a fresh process (no earlier row's allocations in its heap)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 5
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    print(
        f"measured matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s",
        flush=True,
    )
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [256] if args.quick else [1024, 256]
    models = args.models.split(",")
    enc = encoder_rows(models, sizes, repeats, peaks, isolate=args.isolate, threads=args.threads)
    dec = [] if args.no_decoder else decoder_rows([1, 16, 64, 256], 256, repeats, peaks)
    print("\nImage encoder, batch 1 (seconds, median):")
    print_table(
        enc,
        [
            "model",
            "input",
            "GFLOP",
            "ref GFLOP",
            "ref fp32 s",
            "ours fp32 s",
            "ours bf16 s",
            "speedup fp32",
            "speedup bf16",
            "% fp32 peak",
            "% bf16 peak",
            "bf16 max abs diff",
        ],
    )
    print("\nMask decoder, N single-point prompts on one embedding (seconds, median):")
    print_table(
        dec,
        [
            "input",
            "prompts",
            "GFLOP",
            "ref fp32 s",
            "ours fp32 s",
            "ours bf16 s",
            "speedup bf16",
            "auto precision",
            "floor s",
            "x floor",
            "prompts/s",
        ],
    )
    full = models == ["vit_t", "vit_b"] and not args.sizes and not args.no_decoder
    name = "sam_speed" if full else "sam_speed_" + "_".join(models + [str(s) for s in sizes])  # partial runs apart
    name += "_isolated" if args.isolate else ""
    write_results(name, {"peak_gflops": peaks, "encoder": enc, "decoder": dec, "threads": args.threads})


if __name__ == "__main__":
    main()
