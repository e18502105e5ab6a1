"""GET /datasets/{version}/report: a version's HTML page (lineage, sizes, label balance, loss curves).

The page is drawn by diet_engine.evaluate.report from the registry (the version and its parents, the
blocks' label rates, the stream's audited versions) and the version's synthetic.parquet, of which only the stage and logit
columns are read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from diet_engine.dataset.artifacts import SYNTHETIC
from diet_engine.evaluate.report import AuditRow, dataset_report, render, synthetic_label_rates
from service import diffs
from service.auth import require
from service.deps import DatabaseDep, StorageDep
from service.manifest import manifest
from service.registry import audits, blocks
from service.registry.tables import Audit
from service.routes.datasets import RESOLVED_HEADER, find_version

router = APIRouter(tags=["datasets"])

# The page is self-contained: it may load nothing, run nothing, and only style itself.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "Cache-Control": "private, no-cache",
}


@router.get(
    "/datasets/{version}/report",
    response_class=HTMLResponse,
    dependencies=[Depends(require("read"))],
    responses={200: {"content": {"text/html": {}}, "description": "a self-contained HTML page"}},
)
def report(version: str, db: DatabaseDep, storage: StorageDep) -> HTMLResponse:
    """The version's page; with a parent, it shows the diff against it (rows kept, added, dropped, drift)."""
    # The registry's part first, in a session of its own, closed before the file is read and the page drawn.
    with db.read_session() as session:
        found = find_version(session, version)
        label = found.label
        own_side = diffs.side_of(found)
        parent_side, diff_note = None, None
        if found.parent is not None:
            if found.parent.purged_at is None:
                parent_side = diffs.side_of(found.parent)
            else:
                diff_note = f"{found.parent.label} was purged: its rows are gone, so there is no diff against it."
        lineage: list[dict[str, Any]] = []
        current = found
        while current is not None:
            lineage.append(manifest(current).model_dump(mode="json"))
            current = current.parent
        lineage.reverse()
        label_rates = {}
        for ref in found.blocks:
            block = blocks.get(session, ref["id"])
            if block is not None:
                label_rates[block.stage] = block.label_rates
        threshold = (found.stream.audit or {}).get("threshold")
        audit_rows = [audit_row(a, threshold) for a in audits.history(session, found.stream_id)]
        synthetic_key = next(a["key"] for a in found.artifacts if a["name"] == SYNTHETIC)
        temperature = float(found.config.get("distill", {}).get("temperature", 1.0))  # as the soft labels were made
    with storage.open(synthetic_key) as fh:
        distilled = synthetic_label_rates(fh, temperature)
    diff = diffs.compare(storage, parent_side, own_side) if parent_side is not None else None
    page = render(dataset_report(lineage, label_rates, distilled, diff=diff, diff_note=diff_note,
                                 audits=audit_rows, audit_threshold=threshold))  # fmt: skip
    return HTMLResponse(page, headers={**HEADERS, RESOLVED_HEADER: label})


def audit_row(audit: Audit, threshold: float | None) -> AuditRow:
    """A succeeded audit, flagged when its τ is below the stream's threshold."""
    result = audit.result or {}
    tau = result.get("kendall_tau")
    return AuditRow(
        version=audit.version.label, created_at=audit.finished_at.strftime("%Y-%m-%d %H:%M") if audit.finished_at else None,
        kendall_tau=tau, top1_regret=result["top1_regret"],
        mean_auc=result["mean_auc"]["version"], full_mean_auc=result["mean_auc"]["full"], alarm=threshold is not None and tau is not None and tau < threshold,
    )  # fmt: skip
