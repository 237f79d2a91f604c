"""Model versions: artifact, metadata, metrics, lineage, stage, checksums."""

from pilothouse.registry.local import (
    ChecksumMismatch,
    LocalRegistry,
    ModelNotFound,
    ModelVersion,
    RegistryError,
)

__all__ = ["ChecksumMismatch", "LocalRegistry", "ModelNotFound", "ModelVersion", "RegistryError"]
