"""The SAM image encoders trace into one `torch.compile` graph (no graph breaks), with and without autograd."""

from __future__ import annotations

import pytest
import torch

from promptsam.models.sam.image_encoder import ImageEncoderViT
from promptsam.models.sam.tiny_vit import tiny_vit_5m

pytestmark = pytest.mark.filterwarnings("ignore")


def encoders() -> list[tuple[str, torch.nn.Module, int]]:
    """TinyViT-5M and a two-block ViT (one windowed, one global block), each with an input size."""
    vit = ImageEncoderViT(img_size=128, embed_dim=64, depth=2, num_heads=2, out_chans=32, window_size=5,
                          global_attn_indexes=(1,))
    return [("vit_t", tiny_vit_5m(), 192), ("vit", vit, 128)]


@pytest.mark.parametrize("grad", [False, True])
def test_encoders_trace_as_one_graph(grad: bool) -> None:
    for name, encoder, size in encoders():
        encoder.train(grad)
        x = torch.randn(1, 3, size, size)
        torch._dynamo.reset()
        with torch.set_grad_enabled(grad):
            report = torch._dynamo.explain(encoder)(x)
            eager = encoder(x)
        assert report.graph_break_count == 0, (name, [str(r.reason) for r in report.break_reasons])
        assert report.graph_count == 1, name
        compiled = torch.compile(encoder, backend="eager")
        with torch.set_grad_enabled(grad):
            assert torch.allclose(compiled(x), eager, atol=1e-5), name


def test_prompt_decoding_traces_as_one_graph() -> None:
    from promptsam.models.sam.build import build_sam

    sam = build_sam("vit_t", checkpoint=None, image_size=256).eval()
    embeddings = torch.randn(2, 256, 16, 16)
    points, labels = torch.rand(3, 2, 2) * 256, torch.tensor([[1, 0], [1, 0], [1, -1]])
    image_index = torch.tensor([0, 1, 1])

    def decode(e, p, lab, i):
        return sam.decode(e, points=(p, lab), image_index=i)

    torch._dynamo.reset()
    with torch.no_grad():
        report = torch._dynamo.explain(decode)(embeddings, points, labels, image_index)
    assert report.graph_break_count == 0, [str(r.reason) for r in report.break_reasons]
    assert report.graph_count == 1
