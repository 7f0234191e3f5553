"""What routes receive as `Annotated` parameters: the process's `Runtime` and the caller (`Viewer`,
set by the app's token check)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inboxlink.crm.access import Viewer
from inboxlink.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def get_viewer(request: Request) -> Viewer:
    viewer: Viewer = request.state.viewer
    return viewer


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ViewerDep = Annotated[Viewer, Depends(get_viewer)]
