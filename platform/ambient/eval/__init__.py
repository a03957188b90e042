"""Memorization audit and quality evaluation (see docs/audit.md)."""

from .api import ModelAudit, audit_model, dry_run, memorization_score, run_audit
from .config import AuditConfig, check_paths
from .features import BuiltinFeatures, DinoV2Features, FeatureSpace, build_extractor, cosine_similarity
from .items import AuditItems, load_items

__all__ = [
    "AuditConfig",
    "AuditItems",
    "BuiltinFeatures",
    "DinoV2Features",
    "FeatureSpace",
    "ModelAudit",
    "audit_model",
    "build_extractor",
    "check_paths",
    "cosine_similarity",
    "dry_run",
    "load_items",
    "memorization_score",
    "run_audit",
]
