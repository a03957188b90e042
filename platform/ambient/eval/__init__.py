"""Memorization audit and quality evaluation (see docs/audit.md).

Names are imported on first use (ambient.lazy): a job validates its config before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "ModelAudit": "api",
    "audit_model": "api",
    "dry_run": "config",
    "memorization_score": "api",
    "run_audit": "api",
    "AuditConfig": "config",
    "check_paths": "config",
    "BuiltinFeatures": "features",
    "DinoV2Features": "features",
    "FeatureSpace": "features",
    "build_extractor": "features",
    "cosine_similarity": "features",
    "AuditItems": "items",
    "load_items": "items",
    "AuditLayout": "results",
    "AuditResult": "results",
    "ModelResult": "results",
}
__all__ = [
    "AuditConfig",
    "AuditItems",
    "AuditLayout",
    "AuditResult",
    "BuiltinFeatures",
    "DinoV2Features",
    "FeatureSpace",
    "ModelAudit",
    "ModelResult",
    "audit_model",
    "build_extractor",
    "check_paths",
    "cosine_similarity",
    "dry_run",
    "load_items",
    "memorization_score",
    "run_audit",
]
assert sorted(__all__) == sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .api import ModelAudit, audit_model, memorization_score, run_audit
    from .config import AuditConfig, check_paths, dry_run
    from .features import BuiltinFeatures, DinoV2Features, FeatureSpace, build_extractor, cosine_similarity
    from .items import AuditItems, load_items
    from .results import AuditLayout, AuditResult, ModelResult
