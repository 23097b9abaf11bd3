"""distill=meta: few-shot meta-distillation (MAML + KD) and its baselines, as one config node.

The episodic recipe is ``tlrun/pipelines/meta.py``; the inner-loop adaptation of a functional copy is
``tlrun/methods/maml.py``, the prototypes ``tlrun/methods/protonet.py``, the KD mix ``tlrun/methods/kd.py``.
Modes stay values of one key (``distill=meta distill.meta_mode=maml|protonet|kd_finetune|meta_distill``):
they share episodes, the teacher and the evaluation, so their results are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from tlrun.config.fields import bounded, choice
from tlrun.config.methods import TeacherBase
from tlrun.methods import DISTILL


@dataclass
class MetaConfig(TeacherBase):
    """distill=meta: N-way K-shot episodes, the MAML inner loop, the teacher's episode targets."""

    alpha: float = bounded(0.5, low=0.0, high=1.0,
                           help="Weight of the soft (teacher) term of the inner loss; 1 - alpha weights its CE")
    # --- distill=meta: few-shot episodes (N-way K-shot), MAML inner loop on a functional copy ---
    # meta_distill: inner loss = the KD mix above (alpha) to the teacher's episode soft targets;
    # maml: inner CE, no teacher; protonet: prototypes on the teacher's features (no training);
    # kd_finetune: KD on the meta-train classes, then a prototype-initialised head tuned per episode.
    meta_mode: str = choice("meta_distill", ("meta_distill", "maml", "protonet", "kd_finetune"),
                            help="meta_distill (MAML, inner KD to the teacher), maml (inner CE), "
                                 "protonet (teacher prototypes), kd_finetune (KD, then a prototype head)")
    n_way: int = bounded(5, low=2, help="classes per episode (N-way)")
    k_shot: int = bounded(5, low=1, help="support images per class in training episodes (K-shot)")
    n_query: int = bounded(15, low=1, help="query images per class per episode")
    meta_batch: int = bounded(4, low=1, help="episodes per outer step")
    episodes_per_epoch: int = bounded(200, low=1, help="training episodes per epoch")
    inner_steps: int = bounded(5, low=1, help="inner-loop SGD steps on the support set")
    inner_lr: float = bounded(0.1, low=0.0, low_open=True, help="inner-loop learning rate")
    eval_inner_steps: int = bounded(10, low=1, help="adaptation steps on meta-val/meta-test episodes")
    first_order: bool = field(default=False, metadata={
        "help": "first-order MAML (no gradient through the inner updates)"})
    outer_alpha: float = bounded(0.0, low=0.0, high=1.0, help="KD share of the outer (query) loss")
    teacher_scale: float = bounded(10.0, low=0.0, low_open=True,
                                   help="teacher logits = -scale x squared distance of L2-normalised "
                                        "features to the prototypes")
    meta_test_classes: Optional[List[str]] = field(default=None, metadata={
        "help": "held-out meta-test classes (names); null = the last half of the classes "
                "(at least n_way)"})
    eval_shots: List[int] = field(default_factory=lambda: [1, 5],
                                  metadata={"validator": lambda v: None if v and all(int(k) >= 1 for k in v)
                                            else "give shots >= 1, e.g. distill.eval_shots=[1,5]",
                                            "help": "support shots evaluated on meta-test episodes"})
    eval_episodes: int = bounded(200, low=1, help="meta-test episodes per evaluated shot count")
    val_episodes: int = bounded(50, low=1, help="meta-val episodes per validation (model selection)")


# The pipeline is the method here: it builds its own episodic step (tlrun.pipelines.meta.MetaLearner).
DISTILL.register("meta", MetaConfig, pipeline="meta")(None)
