"""Networks: timm models and their weights (hub or local files, with clear errors), the small-image backbones
registered in timm, and exports for deployment (``python -m models.onnx_export``)."""

from models import cifar_resnets  # noqa: F401  (registers the small-image backbones in timm)
