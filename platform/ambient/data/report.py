"""Human-readable run summary of prepare_shards (the JSON version lies beside the manifest)."""

from __future__ import annotations


def print_summary(summary: dict) -> None:
    mb = summary["bytes"] / 1e6
    print(
        f"wrote {summary['rows_written']} rows in {summary['shards']} shards ({mb:.2f} MB) "
        f"in {summary['seconds']:.1f}s ({summary['rows_per_s']} rows/s); sigma_n = {summary['sigma_n']:.4g}"
    )
    if summary["rows_rejected"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["rejected_by_reason"].items())
        print(f"rejected {summary['rows_rejected']} rows ({reasons}); details in summary.json")
    stale = summary.get("stale_shards")
    if stale and stale["removed_files"]:
        mb = stale["removed_bytes"] / 1e6
        print(f"removed {stale['removed_files']} stale shards of older runs ({mb:.2f} MB)")
    if stale and stale["error"]:
        print(f"warning: stale shards not all removed (the new dataset is complete): {stale['error']}")
