"""What routes receive as `Annotated` parameters: the process's `Runtime` and the caller (`Viewer`,
set by the app's token check)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from inboxlink.crm.access import Viewer
from inboxlink.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def get_viewer(request: Request) -> Viewer:
    viewer: Viewer = request.state.viewer
    return viewer


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# What the databases' 64-bit integer keys (and SQL offsets) can hold: a larger number in a path or
# query is a 422, not a driver error and a 500.
ROW_ID_MAX = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=ROW_ID_MAX)]
Offset = Annotated[int, Query(ge=0, le=ROW_ID_MAX)]
ViewerDep = Annotated[Viewer, Depends(get_viewer)]
