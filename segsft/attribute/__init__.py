"""Stage 1: integrated-gradients attribution of every trace's tokens to its answer."""

from segsft.attribute.ig import IGResult, integrated_gradients
from segsft.attribute.metrics import segment_metrics
from segsft.attribute.quadrature import RULES, quadrature
from segsft.attribute.runner import AttributeStage, attribution_dir

__all__ = ["AttributeStage", "IGResult", "RULES", "attribution_dir", "integrated_gradients", "quadrature", "segment_metrics"]
