"""Which pixels made the model choose its class: DeepLIFT's rescale rule against a black image.

For the quickstart MLP (Linear, ReLU, Linear, ReLU, Linear) the rescale rule is exact arithmetic:
each ReLU passes back (ReLU(z) - ReLU(z0)) / (z - z0) times what reaches it, where z and z0 are its
inputs on the image and on the baseline (its gradient where the two are equal), and each Linear
passes back through its weights. The attributions then sum to logit(image) - logit(black) for the
explained class, up to float rounding: the completeness that integrated gradients only approaches
with many steps. Written here in plain torch so serving imports no explanation library (Captum
pulls in a plotting stack); tests check it against Captum's DeepLift on real images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.mlp import IMAGE_SIDE, NeuralNetwork
from models.preprocess import pixels_to_input


@dataclass(frozen=True)
class Explanation:
    attributions: torch.Tensor  # float32 (N, 28, 28): each pixel's share of logit(image) - logit(black)
    target: torch.Tensor  # int64 (N,): the explained class (the predicted one unless given)
    logit_change: torch.Tensor  # float32 (N,): logit(image) - logit(black) for the target, what the map sums to


def _rescale(
    after: torch.Tensor, after_base: torch.Tensor, before: torch.Tensor, before_base: torch.Tensor
) -> torch.Tensor:
    """DeepLIFT's multiplier for a ReLU: secant slope where the input moved, gradient (0 or 1) where it did not."""
    moved = before - before_base
    gradient = (before > 0).to(before.dtype)
    return torch.where(moved.abs() > 1e-7, (after - after_base) / torch.where(moved == 0, 1, moved), gradient)


@torch.inference_mode()
def explain(model: NeuralNetwork, pixels: torch.Tensor, target: torch.Tensor | None = None) -> Explanation:
    """DeepLIFT (rescale) maps for uint8 (N, 28, 28) pixels, baseline black, for ``target`` or the predicted class."""
    first, _, middle, _, last = model.linear_relu_stack
    device = first.weight.device
    x = pixels_to_input(pixels).to(device).flatten(1)
    base = torch.zeros_like(x[:1])
    z1, z1_base = first(x), first(base)
    a1, a1_base = z1.relu(), z1_base.relu()
    z2, z2_base = middle(a1), middle(a1_base)
    a2, a2_base = z2.relu(), z2_base.relu()
    logits, logits_base = last(a2), last(a2_base)
    chosen = logits.argmax(1) if target is None else target.to(device)
    multiplier = last.weight[chosen] * _rescale(a2, a2_base, z2, z2_base)  # (N, 512): d logit / d a2, rescaled
    multiplier = (multiplier @ middle.weight) * _rescale(a1, a1_base, z1, z1_base)
    attributions = x * (multiplier @ first.weight)  # (x - baseline) times the input multiplier; baseline is 0
    change = logits.gather(1, chosen[:, None])[:, 0] - logits_base[0, chosen]
    return Explanation(
        attributions=attributions.view(-1, IMAGE_SIDE, IMAGE_SIDE).float().cpu(),
        target=chosen.cpu(),
        logit_change=change.float().cpu(),
    )
