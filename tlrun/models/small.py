"""Small CNNs for tiny images (digits, 28-32 px), trained from scratch."""

from __future__ import annotations

from torch import nn

from tlrun.models.factory import MODELS, ModelSpec, Preprocess

# Small models see the data at its own scale; mean/std 0.5 maps [0, 1] pixels to [-1, 1].
SMALL_PREPROCESS = Preprocess(crop_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class LeNet(nn.Module):
    """The LeNet-style CNN of the DANN paper's digit experiments (conv 32/48, fc 100/100)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 32, 5, padding=2), nn.BatchNorm2d(32),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 48, 5, padding=2), nn.BatchNorm2d(48),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(2))
        # Fixed 4x4 grid so any input size >= 16 px works.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(48 * 16, 100), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc2 = nn.Sequential(nn.Linear(100, 100), nn.ReLU(inplace=True))
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x):
        return self.fc(self.fc2(self.fc1(self.pool(self.conv2(self.conv1(x))))))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (3 stages of 16/32/64 channels, ``blocks`` blocks each; 2 → ResNet-14)."""

    def __init__(self, num_classes: int = 10, blocks: int = 2, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, ch = [], width
        for i, out_ch in enumerate((width, width * 2, width * 4)):
            layers = [BasicBlock(ch, out_ch, 1 if i == 0 else 2)]
            layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class Conv4(nn.Module):
    """The few-shot learning backbone of MAML and ProtoNet: 4 × (conv3x3-64, BN, ReLU, max-pool 2)."""

    def __init__(self, num_classes: int = 5, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        blocks, ch = [], in_channels
        for _ in range(4):
            blocks += [nn.Conv2d(ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            ch = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


MODELS.register("lenet")(ModelSpec(build=LeNet, preprocess=SMALL_PREPROCESS))
MODELS.register("small_resnet")(ModelSpec(build=SmallResNet, preprocess=SMALL_PREPROCESS))
MODELS.register("conv4")(ModelSpec(build=Conv4, preprocess=SMALL_PREPROCESS))
