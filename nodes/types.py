"""Custom socket types of the pack (wire names are API: shared workflows refer to them)."""
from comfy_api.v0_0_2 import io

SteeringVectorType = io.Custom("STEERING_VECTOR")
"""One steering vector (steering.vector_file.SteeringVector)."""

SteeringVectorSetType = io.Custom("STEERING_VECTOR_SET")
"""Several vectors of one method and architecture, for fair sampling (a tuple of SteeringVector)."""

SafetyScoreType = io.Custom("SAFETY_SCORE")
"""A differentiable safety score of images (steering.safety.SafetyScore): high = unsafe."""

AttributeClassifierType = io.Custom("ATTRIBUTE_CLASSIFIER")
"""Labels images by an attribute (``classes``, ``classify(images) -> list[str]``), for fairness metrics."""

SteeringLossType = io.Custom("STEERING_LOSS")
"""Loss history of a training run: {"method", "name", "iterations", "series": {phase: [loss per iteration]}}."""
