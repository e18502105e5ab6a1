"""GET /datasets/{a}/diff/{b}: what changed between two versions (computed by diet_engine.dataset.diff)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from diet_client.models import DatasetDiff
from service import diffs
from service.auth import require
from service.deps import DatabaseDep, StorageDep
from service.routes.datasets import RESOLVED_HEADER, find_version

router = APIRouter(tags=["datasets"])


@router.get("/datasets/{a}/diff/{b}", response_model=DatasetDiff, dependencies=[Depends(require("read"))])
async def diff_versions(a: str, b: str, db: DatabaseDep, storage: StorageDep, response: Response) -> DatasetDiff:
    """Rows kept, added and dropped by stage of origin, label balance per task, embedding drift of the kept rows,
    config and lineage changes, from `a` to `b` (each named any way a version can be; the answer names both as
    resolved)."""

    def inputs() -> tuple[diffs.SideInputs, diffs.SideInputs]:
        with db.read_session() as session:  # closed before the files are read
            return diffs.side_of(find_version(session, a)), diffs.side_of(find_version(session, b))

    side_a, side_b = await run_in_threadpool(inputs)
    diff = await run_in_threadpool(diffs.compare, storage, side_a, side_b)
    response.headers[RESOLVED_HEADER] = f"{side_a.label}, {side_b.label}"
    return diffs.diff_out(diff)
