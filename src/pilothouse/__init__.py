"""pilothouse: ML training and model serving with Kubernetes-grade guarantees.

One declarative spec runs embedded on one machine (``pilothouse up``) or on
Kubernetes through an operator. See docs/architecture.md for the layers.
"""

__version__ = "0.1.0"
