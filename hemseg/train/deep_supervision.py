"""Deep supervision for FCN-ResNet50: a training-only auxiliary head on ``layer3`` (``hemseg train --aux-loss W``).

torchvision's FCN has such a head (``aux_loss=True``) and its segmentation reference trains FCN-ResNet50 with it,
at weight 0.5: the loss then also reaches the first three ResNet stages through a path that skips ``layer4`` and
the classifier, which helps a 50-layer network started from random weights (deeply-supervised nets, Lee et al.,
2015; PSPNet's auxiliary loss, Zhao et al., 2017). hemseg's deployed FCN has one output, so the head lives here,
beside the model rather than inside it: :class:`DeepSupervised` wraps the model for the optimizer steps only.
Validation, EMA, ``best.pt`` and every export see the plain model; the head's weights are kept only in ``last.pt``
(``aux_state``), for ``--resume``.
"""

from __future__ import annotations

import torch
from torch import nn

from hemseg.train.models import FCNResNet50

#: channels of ResNet-50's layer3, the auxiliary head's input
LAYER3_CHANNELS = 1024


class DeepSupervised(nn.Module):
    """``model`` plus an auxiliary one-channel FCN head on its ``layer3``.

    In training mode ``forward`` returns ``(logits, aux_logits)``, both at the input size; :func:`training_loss`
    adds ``weight`` times the loss of the second. In eval mode it returns the model's logits alone."""

    def __init__(self, model: FCNResNet50, weight: float) -> None:
        super().__init__()
        from torchvision.models.segmentation.fcn import FCNHead

        if not isinstance(model, FCNResNet50):
            raise TypeError(f"deep supervision needs FCN-ResNet50, not {type(model).__name__}")
        if not weight > 0:
            raise ValueError(f"the auxiliary loss weight must be > 0, got {weight}")
        self.model = model
        self.head = FCNHead(LAYER3_CHANNELS, 1)
        self.weight = float(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.model(x)
        logits, layer3 = self.model.forward_with_layer3(x)
        aux = nn.functional.interpolate(self.head(layer3), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux

    def set_prior_bias(self, bias: float) -> None:
        """Start the head's output bias where the model's starts (the lesion prior)."""
        with torch.no_grad():
            self.head[-1].bias.fill_(bias)


def supports(model: nn.Module) -> bool:
    return isinstance(model, FCNResNet50)


def training_loss(model: nn.Module, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                  criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, logits)`` of a training forward pass: ``criterion`` on the logits, plus the auxiliary term when
    ``model`` is :class:`DeepSupervised`."""
    if isinstance(model, DeepSupervised):
        logits, aux = outputs
        return criterion(logits, target) + model.weight * criterion(aux, target), logits
    return criterion(outputs, target), outputs
