"""The detector DeepEM trains: DeepLung's 3D Res18 (`Res18`, full width by default) and its
detection loss (`DetectionLoss`)."""
from .loss import DetectionLoss, LossResult
from .res18 import MAX_STRIDE, STRIDE, Res18, count_parameters

__all__ = ["Res18", "DetectionLoss", "LossResult", "count_parameters", "STRIDE", "MAX_STRIDE"]
