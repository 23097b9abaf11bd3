"""Freeze strategies and discriminative learning rates (ULMFiT, Howard & Ruder 2018).

A backbone is cut into *stages*: consecutive blocks that produce features at one spatial
resolution (ResNet: stem, layer1..layer4; MobileNetV2: the stride-2/4/8/16/32 groups; VGG: the
conv blocks between pools). The stages come from one probe forward pass, so the same rule serves
every CNN; backbones whose blocks all share a resolution (ViT) are split into four equal groups.
A model that declares its stages (timm's ``feature_info``: the module that ends each feature level)
is cut there instead, so a timm ViT trains block by block and a timm ConvNeXt stage by stage.

- ``none``: everything trains.
- ``all``: linear probe, only the new head trains.
- ``partial``: the last ``trainable_stages`` stages and the head train.
- ``early``: the first half of the stages is frozen.
- ``discriminative``: everything trains; the head gets ``lr``, the stage k below it ``lr / decay**k``.

Two safeguards against distorting pretrained features (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features"): a pretrained backbone trains at ``backbone_lr_mult`` x the head's lr (the usual
~10x lower rate), and LP-FT (``head_warmup_epochs``) trains the head alone for the first epochs, the
backbone then joining from a fitted head instead of a random one.

Frozen modules stay in eval mode during training (BatchNorm statistics and dropout are the
pretrained network's) unless ``train_frozen_bn`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from tlrun.errors import ConfigError

FALLBACK_GROUPS = 4  # stages for backbones whose blocks share one resolution (transformers)
MIN_BLOCKS = 4  # expand containers until the backbone has at least this many blocks


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_blocks(model: nn.Module, head_name: str) -> list[str]:
    """Names of the backbone's blocks in forward order (the head excluded)."""
    def children_of(prefix: str) -> list[str]:
        module = model.get_submodule(prefix) if prefix else model
        names = []
        for child, _ in module.named_children():
            full = f"{prefix}.{child}" if prefix else child
            if full == head_name:
                continue
            if head_name.startswith(full + "."):
                names.extend(children_of(full))  # the container that holds the head
            else:
                names.append(full)
        return names

    blocks = children_of("")
    # ModuleList/ModuleDict are never called as a whole: their items are the blocks.
    while any(isinstance(model.get_submodule(b), (nn.ModuleList, nn.ModuleDict)) for b in blocks):
        at = next(i for i, b in enumerate(blocks)
                  if isinstance(model.get_submodule(b), (nn.ModuleList, nn.ModuleDict)))
        blocks[at:at + 1] = children_of(blocks[at])
    while sum(_param_count(model.get_submodule(b)) > 0 for b in blocks) < MIN_BLOCKS:
        expandable = [b for b in blocks if len(children_of(b)) > 1]
        if not expandable:
            break
        biggest = max(expandable, key=lambda b: _param_count(model.get_submodule(b)))
        at = blocks.index(biggest)
        blocks[at:at + 1] = children_of(biggest)
    return blocks


def _spatial_size(output) -> int | None:
    """Feature-map side of a block output (NCHW or NHWC from a square probe); None for vectors,
    tokens and globally pooled 1x1 maps."""
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        return None
    dims = list(output.shape[1:])
    repeated = [d for d in dims if dims.count(d) >= 2 and d > 1]
    return repeated[0] if repeated else None


@torch.no_grad()
def probe_sizes(model: nn.Module, blocks: list[str], image_size: int) -> dict[str, int | None]:
    """Output feature-map side of each block for one square input.

    Stages are a property of the architecture, so tiny run images (8-32 px digits) are probed at
    128 px, where no stage has collapsed to 1x1 yet; models with a fixed input size get their own.
    """
    sizes: dict[str, int | None] = {}
    hooks = [model.get_submodule(b).register_forward_hook(
        lambda _m, _i, out, name=b: sizes.__setitem__(name, _spatial_size(out))) for b in blocks]
    was_training = model.training
    first_param = next(model.parameters())
    try:
        model.eval()
        for size in dict.fromkeys((max(image_size, 128), image_size)):
            try:
                model(torch.zeros(1, 3, size, size, device=first_param.device, dtype=first_param.dtype))
                return sizes
            except Exception as exc:  # wrong input size for this architecture (assert or shape error)
                error = exc
                sizes.clear()
        raise ConfigError(f"{type(model).__name__} cannot run on {image_size}x{image_size} inputs "
                          f"({str(error).splitlines()[0][:100]}); set data.image_size to what the model expects")
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)


def declared_stage_ends(model: nn.Module) -> list[str]:
    """Modules that end the model's own feature levels (timm's ``feature_info``; a text model's
    ``tlrun_stage_ends``: embeddings, then each encoder layer), in forward order."""
    declared = getattr(model, "tlrun_stage_ends", None)
    if isinstance(declared, list) and declared:
        return list(declared)
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not all(isinstance(level, dict) and "module" in level for level in info):
        return []
    names = {name for name, _ in model.named_modules()}
    ends = [level["module"] for level in info]
    return ends if all(end in names for end in ends) else []


def declared_stages(model: nn.Module, blocks: list[str], ends: list[str]) -> list[list[str]]:
    """Stages that close at each declared end module; blocks after the last end join the last stage."""
    def children(block: str) -> list[str]:
        return [f"{block}.{child}" for child, _ in model.get_submodule(block).named_children()]

    blocks = list(blocks)
    for end in ends:  # an end module that was opened into its children is one block again
        inside = [i for i, b in enumerate(blocks) if b.startswith(end + ".")]
        if inside:
            blocks[inside[0]:inside[-1] + 1] = [end]
    while True:  # open the containers that hold an end module until every end is a block of its own
        at = next((i for i, b in enumerate(blocks) if any(end.startswith(b + ".") for end in ends)), None)
        if at is None:
            break
        blocks[at:at + 1] = children(blocks[at])
    stages: list[list[str]] = [[]]
    for block in blocks:
        stages[-1].append(block)
        if block in ends:
            stages.append([])
    if not stages[-1]:
        stages.pop()
    elif len(stages) > 1:  # the pooling/norm glue before the head belongs to the last stage
        stages[-2].extend(stages.pop())
    return stages


def split_stages(model: nn.Module, blocks: list[str], image_size: int) -> list[list[str]]:
    """Group blocks into stages: at the model's declared feature levels, else by the resolution of
    their outputs (one probe forward)."""
    ends = declared_stage_ends(model)
    if len(ends) >= 2:
        return declared_stages(model, blocks, ends)
    sizes = probe_sizes(model, blocks, image_size)

    stages: list[list[str]] = []
    current_size = None
    for block in blocks:
        size = sizes.get(block)
        has_params = _param_count(model.get_submodule(block)) > 0
        starts_stage = not stages or (has_params and size is not None and size != current_size)
        if starts_stage:
            stages.append([block])
            current_size = size if size is not None else current_size
        else:
            stages[-1].append(block)
    if len(stages) < 3:
        stages = _equal_groups(blocks, FALLBACK_GROUPS)
    return stages


def _equal_groups(blocks: list[str], groups: int) -> list[list[str]]:
    groups = min(groups, len(blocks))
    bounds = [round(i * len(blocks) / groups) for i in range(groups + 1)]
    return [blocks[bounds[i]:bounds[i + 1]] for i in range(groups)]


@dataclass
class FreezePlan:
    strategy: str
    head: str
    stages: list[list[str]]
    frozen_stages: list[int] = field(default_factory=list)
    lr_decay: float = 1.0
    train_frozen_bn: bool = False
    backbone_lr_mult: float = 1.0  # lr of the trainable backbone stages relative to the head's
    head_warmup_epochs: int = 0  # LP-FT: the first epochs train the head alone

    def head_only(self, epoch: int) -> bool:
        """LP-FT: does ``epoch`` (1-based) train the head alone?"""
        return epoch <= self.head_warmup_epochs and len(self.frozen_stages) < len(self.stages)

    @property
    def frozen_modules(self) -> list[str]:
        return [b for i in self.frozen_stages for b in self.stages[i]]

    def _frozen(self, head_only: bool) -> list[int]:
        return list(range(len(self.stages))) if head_only else self.frozen_stages

    def stage_of_params(self, model: nn.Module) -> dict[int, int]:
        """id(param) -> stage index (head = len(stages)). Parameters outside every block
        (ViT's class token and position embedding) count as the first stage."""
        owner: dict[int, int] = {id(p): 0 for p in model.parameters()}
        for index, stage in enumerate(self.stages):
            for block in stage:
                for p in model.get_submodule(block).parameters():
                    owner[id(p)] = index
        for p in model.get_submodule(self.head).parameters():
            owner[id(p)] = len(self.stages)
        return owner

    def apply(self, model: nn.Module, head_only: bool = False) -> None:
        """Set requires_grad: parameters of frozen stages (every stage when ``head_only``) off, the rest on."""
        owner = self.stage_of_params(model)
        frozen = set(self._frozen(head_only))
        for p in model.parameters():
            p.requires_grad_(owner[id(p)] not in frozen)

    def set_train_mode(self, model: nn.Module, head_only: bool = False) -> None:
        """model.train(), with frozen modules kept in eval mode (their BN stats must not move)."""
        model.train()
        for name in (b for i in self._frozen(head_only) for b in self.stages[i]):
            frozen = model.get_submodule(name)
            frozen.eval()
            if self.train_frozen_bn:
                for m in frozen.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Optimizer groups of trainable parameters; discriminative lrs decay stage by stage."""
        owner = self.stage_of_params(model)
        groups: dict[int, list[nn.Parameter]] = {}
        for p in model.parameters():
            if p.requires_grad:
                groups.setdefault(owner[id(p)], []).append(p)
        head_index = len(self.stages)
        decay = self.lr_decay if self.strategy == "discriminative" else 1.0

        def stage_lr(index: int) -> float:
            return lr if index == head_index else lr * self.backbone_lr_mult / decay ** (head_index - index)

        return [{"params": params, "lr": stage_lr(index), "stage": index} for index, params in sorted(groups.items())]


def make_plan(model: nn.Module, head_name: str, strategy: str, image_size: int,
              trainable_stages: int = 1, lr_decay: float = 2.6, train_frozen_bn: bool = False,
              backbone_lr_mult: float = 1.0, head_warmup_epochs: int = 0) -> FreezePlan:
    """Decide which stages train for ``strategy`` and apply it to ``model``."""
    stages = split_stages(model, backbone_blocks(model, head_name), image_size)
    count = len(stages)
    frozen = {
        "none": [],
        "discriminative": [],
        "all": list(range(count)),
        "partial": list(range(max(0, count - trainable_stages))),
        "early": list(range(count // 2)),
    }[strategy]
    plan = FreezePlan(strategy, head_name, stages, frozen, lr_decay, train_frozen_bn, backbone_lr_mult,
                      head_warmup_epochs)
    plan.apply(model)
    return plan


def count_params(parameters: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)
