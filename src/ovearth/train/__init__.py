"""Training an adapter of the fusion encoder: what SAM 3's decoder knows becomes supervision.

``losses`` holds the encoder-side terms (attention distillation, mask contrastive,
boundary hinge); ``segmentation_loss`` the supervised ``L_seg`` and the combined
objective ``L_seg + 0.1 L_attn + 0.05 L_contrast + 0.02 L_boundary`` (MISSION.md part 2);
``adapter`` what trains and the adapter files; ``loop.train`` the run itself::

    from ovearth.train import TrainSettings, apply_adapter
    from ovearth.train.loop import train
    train(load_model(), SegmentationDataset("loveda", root), "runs/a", TrainSettings(steps=500))
    adapted = apply_adapter(load_model(), "runs/a")   # then Segmentor(adapted, ...)
"""

from .adapter import Trainable, adapted, apply_adapter
from .losses import AttentionDistillation, BoundaryHinge, MaskContrastive, mask_boundary, masks_on_grid
from .segmentation_loss import CombinedLoss, SegmentationLoss
from .settings import TrainSettings

__all__ = [
    "AttentionDistillation",
    "BoundaryHinge",
    "CombinedLoss",
    "MaskContrastive",
    "SegmentationLoss",
    "TrainSettings",
    "Trainable",
    "adapted",
    "apply_adapter",
    "mask_boundary",
    "masks_on_grid",
]
