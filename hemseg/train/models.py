"""The three segmentation networks: FCN-ResNet50 (the paper's), U-Net and Attention U-Net (its baselines).

Every model maps a float32 batch (N, 3, S, S) to one logit map (N, 1, S, S) as a plain tensor, so training, export
and benchmarking treat them alike.

FCN-ResNet50 is torchvision's with ``classifier[4] = Conv2d(512, 1, 1)``. Its auxiliary head (an FCN head on layer3,
used by torchvision for a 0.5-weighted auxiliary loss) is **dropped** (``aux_loss=False``): the paper trains one
output with BCEWithLogitsLoss, the deployed graph has one output, and the aux head would add 2.4 M unused parameters.
When pretrained COCO weights are loaded, the aux head's weights in the file are ignored. The ``hemseg`` recipe can
train with such a head all the same (``--aux-loss``, :mod:`hemseg.train.deep_supervision`); it lives outside this
model and never reaches ``best.pt`` or an export.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

MODEL_NAMES = ("fcn_resnet50", "unet", "attention_unet")


class FCNResNet50(nn.Module):
    """torchvision FCN-ResNet50 with a one-channel head, returning ``out`` as a tensor."""

    def __init__(self, weights_backbone: object | None = None) -> None:
        super().__init__()
        from torchvision.models.segmentation import fcn_resnet50

        self.net = fcn_resnet50(weights=None, weights_backbone=weights_backbone, num_classes=21, aux_loss=False)
        self.net.classifier[4] = nn.Conv2d(512, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]

    def forward_with_layer3(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits of :meth:`forward` (the same computation as torchvision's) and the backbone's ``layer3``
        features (1024 channels, stride 8), which a training-only auxiliary head
        (:mod:`hemseg.train.deep_supervision`) reads."""
        size = x.shape[-2:]
        layer3 = None
        for name, module in self.net.backbone.items():
            x = module(x)
            if name == "layer3":
                layer3 = x
        out = nn.functional.interpolate(self.net.classifier(x), size=size, mode="bilinear", align_corners=False)
        return out, layer3


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., 2018): weights skip features by their relevance to the gating signal."""

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.w_x = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.w_g = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.w_x(x) + self.w_g(g))
        return x * self.psi(a)


class UNet(nn.Module):
    """A plain U-Net (Ronneberger et al., 2015) with BatchNorm; optional attention gates on the skips.

    ``base`` channels double at each of ``depth`` levels. With base=64, depth=4 it has about 31 M parameters,
    comparable to FCN-ResNet50's 33 M.
    """

    def __init__(self, base: int = 64, depth: int = 4, attention: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError("UNet needs depth >= 1 and base >= 1")
        chans = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_conv_block(in_channels, chans[0])])
        self.down.extend(_conv_block(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.gates = nn.ModuleList(
            AttentionGate(chans[i], chans[i], max(chans[i] // 2, 1)) if attention else nn.Identity()
            for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(_conv_block(chans[i] * 2, chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        multiple = 2 ** (len(self.down) - 1)
        pad_h, pad_w = (-size[0]) % multiple, (-size[1]) % multiple
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, gate, dec in zip(self.up, self.gates, self.dec):
            g = up(x)
            skip = skips.pop()
            skip = gate(skip, g) if self.attention else skip
            x = dec(torch.cat([skip, g], dim=1))
        return self.head(x)[..., : size[0], : size[1]]


def build_model(name: str, weights_backbone: object | None = None, **kwargs) -> nn.Module:
    """Build a model by name. ``kwargs`` go to the U-Net variants (``base``, ``depth``)."""
    if name == "fcn_resnet50":
        if kwargs:
            raise ValueError(f"fcn_resnet50 takes no model options, got {sorted(kwargs)}")
        return FCNResNet50(weights_backbone=weights_backbone)
    if name == "unet":
        return UNet(attention=False, **kwargs)
    if name == "attention_unet":
        return UNet(attention=True, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def output_layer(model: nn.Module) -> nn.Conv2d:
    """The final 1x1 convolution that produces the logits (FCN-ResNet50's ``classifier[4]``, the U-Nets' ``head``)."""
    layer = model.net.classifier[4] if isinstance(model, FCNResNet50) else getattr(model, "head", None)
    if not isinstance(layer, nn.Conv2d) or layer.out_channels != 1:
        raise TypeError(f"no one-channel output convolution found in {type(model).__name__}")
    return layer


@torch.no_grad()
def set_prior_bias(model: nn.Module, foreground_fraction: float) -> float:
    """Set the output bias to the log-odds of ``foreground_fraction`` (clipped to [1e-4, 0.5]), so that an untrained
    model predicts the lesion prior everywhere instead of p = 0.5 (the prior-probability initialization of
    Lin et al., 2017, RetinaNet). Returns the bias."""
    import math

    p = min(max(float(foreground_fraction), 1e-4), 0.5)
    bias = math.log(p / (1 - p))
    layer = output_layer(model)
    if layer.bias is None:
        raise TypeError("the output convolution has no bias")
    layer.bias.fill_(bias)
    return bias


@torch.no_grad()
def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale (gamma) of the last BatchNorm in every residual block of ``model``, so each block starts as
    the identity (Goyal et al. 2017; torchvision's ``resnet50(zero_init_residual=True)``, which ``fcn_resnet50``
    does not expose). Returns the number of blocks changed: 16 for FCN-ResNet50, 0 for the U-Nets (no residual
    blocks). For random initialization only: pretrained scales must not be erased."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    n = 0
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
            n += 1
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
            n += 1
    return n


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
