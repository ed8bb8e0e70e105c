"""The PyTorch quickstart's NeuralNetwork, unchanged, so its own state dicts load as they are."""

import torch
from torch import nn

IMAGE_SIDE = 28
NUM_CLASSES = 10
ARCHITECTURE = "NeuralNetwork"


class NeuralNetwork(nn.Module):
    """Flatten -> 784-512-512-10 MLP with ReLU; returns logits (softmax is the caller's choice)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(IMAGE_SIDE * IMAGE_SIDE, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear_relu_stack(self.flatten(x))
        return logits
