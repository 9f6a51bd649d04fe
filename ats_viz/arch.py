"""The shipped model's architecture: a plain timm VisionTransformer with a convolutional stem.

Its own module so that loading the shipped model needs only torch and timm: training (and
with it the synthetic shapes and OpenCV) imports this, never the other way round.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class ConvStemEmbed(PatchEmbed):
    """Patch embedding by a small convolutional stem (stride 16) instead of one 16 x 16 conv.

    A stem lets a small ViT learn shapes from far fewer images; it stays timm's PatchEmbed
    (same grid, same interface), so the model is still a plain timm VisionTransformer.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        dim, cin = self.proj.out_channels, self.proj.in_channels
        # Strides 4, 2, 2: cheap on the CPU (the first layer already works at 56 x 56).
        layers: list[nn.Module] = [nn.Conv2d(cin, 32, 4, 4, bias=False), nn.BatchNorm2d(32), nn.GELU(),
                                   nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.GELU(),
                                   nn.Conv2d(64, dim, 2, 2)]
        self.proj = nn.Sequential(*layers)


@dataclass
class ModelSpec:
    """The embedded model's architecture, stored in its card so loading can rebuild it.

    The classes and input size belong to the task it learns (``synthetic.CLASSES`` and
    ``synthetic.SIZE`` for the shipped model), so they have no defaults here.
    """

    width: int = 96
    depth: int = 12
    heads: int = 3
    _: KW_ONLY
    num_classes: int
    img_size: int


def build(spec: ModelSpec) -> VisionTransformer:
    net = VisionTransformer(
        img_size=spec.img_size, patch_size=16, num_classes=spec.num_classes,
        embed_dim=spec.width, depth=spec.depth, num_heads=spec.heads, embed_layer=ConvStemEmbed,
    )
    # timm's data config reads this: the synthetic images are already 224 px, so no crop.
    net.pretrained_cfg = dict(input_size=(3, spec.img_size, spec.img_size), crop_pct=1.0,
                              interpolation="bilinear", mean=MEAN, std=STD)
    return net
