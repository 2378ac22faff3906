"""vistra: vision transformers for classification, segmentation, detection and tracking."""
from vistra.checkpoints.errors import CheckpointError
from vistra.registry import UnknownModelError, create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["CheckpointError", "UnknownModelError", "__version__", "create_model", "list_models", "register_model"]
