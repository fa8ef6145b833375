"""Training-time losses that turn what SAM 3's decoder knows into supervision for the encoder.

``losses`` holds the encoder-side terms (attention distillation, mask contrastive,
boundary hinge); ``segmentation_loss`` the supervised ``L_seg`` and the combined
objective ``L_seg + 0.1 L_attn + 0.05 L_contrast + 0.02 L_boundary`` (MISSION.md part 2).
"""

from .losses import AttentionDistillation, BoundaryHinge, MaskContrastive, mask_boundary, masks_on_grid
from .segmentation_loss import CombinedLoss, SegmentationLoss

__all__ = [
    "AttentionDistillation",
    "BoundaryHinge",
    "CombinedLoss",
    "MaskContrastive",
    "SegmentationLoss",
    "mask_boundary",
    "masks_on_grid",
]
