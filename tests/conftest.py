import timm
import torch
import pytest


def sharpen(net, factor: float = 4.0):
    """Scale the query and key weights so random-weight attention is peaked, as trained
    attention is: then images keep different numbers of tokens."""
    with torch.no_grad():
        for blk in net.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d] *= factor
    return net


@pytest.fixture(scope="session")
def deit_tiny():
    torch.manual_seed(0)
    return sharpen(timm.create_model("deit_tiny_patch16_224").eval())


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 224, 224, generator=g) * 0.3
    # Bright blobs of different sizes, so the images differ in what stands out.
    for i, r in enumerate((20, 40, 70, 100)):
        x[i, :, 60:60 + r, 50:50 + r] += 2.0
    return x
