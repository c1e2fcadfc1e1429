"""`wd play`'s web server (starlette on uvicorn): the page, one WebSocket per tab for the drive and the tasks,
uploads by POST, and results and drives served from the output directory, the only place it writes to.

Messages from the page: {"type": "key", "key": "left", "down": true}, {"type": "release_all"},
{"type": "play", "playing": false}, {"type": "reset", "seed": 3} or {"type": "reset", "upload": ID},
{"type": "task", "fields": {...TaskRequest}}, {"type": "cancel_task"}.
To it: hello, frame, window, held, playing, notice, progress, result, task_state, error (see the page).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect
from wd_data import write_video
from wd_tokenizer.io import atomic_write_text

from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.play.drive import KEYS, actions_csv, can_drive, world_frame
from wd_cli.play.player import DriveOptions, DrivePlayer, Send, data_url, png_bytes
from wd_cli.play.tasks import TASKS, TaskRequest, run_request, write_result
from wd_cli.play.turns import Cancelled, CancelToken, ModelTurns
from wd_cli.play.uploads import UploadError, UploadLimits, UploadStore, decode_upload

log = logging.getLogger("wd_cli.play")
DRIVE_FILES = ("drive.mp4", "drive.csv")


@dataclass
class Tab:
    """One open page: its drive, its task and the coroutines it started (ended when it closes)."""

    id: str
    send: Send
    player: DrivePlayer | None = None
    task_token: CancelToken = field(default_factory=CancelToken)
    background: set[asyncio.Task] = field(default_factory=set)

    def spawn(self, coroutine: Coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None and not _is_disconnect(error):
            log.error("a tab's work failed", exc_info=error)

    def close(self) -> None:
        """Cancel everything the tab started: its drive's and its task's model work stop at the next step."""
        self.task_token.cancel()
        if self.player is not None:
            self.player.close()
        for task in list(self.background):
            task.cancel()


def _is_disconnect(error: BaseException) -> bool:
    """A send to a page that already went away (its work is being cancelled anyway)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_is_disconnect(inner) for inner in error.exceptions)
    return isinstance(error, WebSocketDisconnect | RuntimeError | OSError)


class PlayServer:
    """The app's state: the pipeline, the model turns every tab's work takes, the uploads and the open tabs."""

    def __init__(self, pipeline: WorldDreamerPipeline, out_dir: Path, drive: DriveOptions,
                 limits: UploadLimits | None = None) -> None:
        self.pipeline, self.drive, self.limits = pipeline, drive, limits or UploadLimits()
        self.out_dir = Path(out_dir).resolve()
        for folder in ("results", "drives", "uploads"):
            (self.out_dir / folder).mkdir(parents=True, exist_ok=True)
        self.turns = ModelTurns()
        # Threads wait for their turn on the model, so several can be busy while only one computes.
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="wd-play")
        self.uploads = UploadStore()
        self.tabs: dict[str, Tab] = {}
        self._results = itertools.count(1)
        self._page = (resources.files("wd_cli.play") / "static" / "index.html").read_text()

    def app(self) -> Starlette:
        routes = [
            Route("/", self._page_response),
            Route("/upload", self._upload, methods=["POST"]),
            Route("/drive/{tab}/{name}", self._download),
            WebSocketRoute("/ws", self._tab_socket),
            Mount("/results", StaticFiles(directory=self.out_dir / "results"), name="results"),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        for tab in list(self.tabs.values()):
            tab.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- HTTP ----------------------------------------------------------------------------------------------------

    async def _page_response(self, request: Request) -> Response:
        return HTMLResponse(self._page)

    async def _upload(self, request: Request) -> Response:
        tab = self.tabs.get(request.query_params.get("tab", ""))
        if tab is None:
            return _error("upload from an open page (its tab is unknown: reload it)", 400)
        declared = request.headers.get("content-length", "")
        limit = self.limits.max_bytes
        too_large = f"the file is more than the {limit / 2**20:.1f} MiB an upload may have (--max-upload-mb)"
        if declared.isdigit() and int(declared) > limit:
            return _error(too_large, 413)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                return _error(too_large, 413)
        size = (self.pipeline.defaults.height, self.pipeline.defaults.width)
        scratch = self.out_dir / "uploads" / f"{tab.id}-{secrets.token_hex(4)}"
        try:
            frames = await run_in_threadpool(decode_upload, bytes(data), self.limits, size, scratch)
        except UploadError as error:
            return _error(str(error), 400)
        upload = self.uploads.add(tab.id, frames)
        return JSONResponse({"upload": upload.id, "frames": len(frames), "height": frames.shape[1],
                             "width": frames.shape[2], "preview": data_url(png_bytes(frames[0]))})

    async def _download(self, request: Request) -> Response:
        tab, name = self.tabs.get(request.path_params["tab"]), request.path_params["name"]
        if tab is None or tab.player is None or name not in DRIVE_FILES:
            return _error("no such drive: downloads last as long as the page is open", 404)
        frames, actions = tab.player.recording()
        if not frames:
            return _error("nothing driven yet", 404)
        path = self.out_dir / "drives" / tab.id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "drive.csv":
            atomic_write_text(path, actions_csv(actions))
        else:
            await run_in_threadpool(write_frames, frames, path, self.drive.fps)
        return FileResponse(path, filename=name)

    # -- the tab's WebSocket -------------------------------------------------------------------------------------

    async def _tab_socket(self, websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("host"):
            # Another site's page in the user's browser may not drive (or watch) this model.
            await websocket.close(code=1008)
            return
        await websocket.accept()
        lock = asyncio.Lock()  # one message at a time: the drive, the task and replies all send

        async def send(message: dict) -> None:
            async with lock:
                await websocket.send_json(message)

        tab = Tab(secrets.token_urlsafe(12), send)
        self.tabs[tab.id] = tab
        try:
            await send(self._hello(tab))
            if can_drive(self.pipeline):
                tab.player = DrivePlayer(self.pipeline, self.turns, self.executor, send, self.drive)
                tab.spawn(tab.player.run())
                tab.spawn(tab.player.reset(world_frame(self.pipeline, 0), seed=0))
            while True:
                await self._handle(tab, await websocket.receive_text())
        except WebSocketDisconnect:
            pass
        finally:
            tab.close()
            self.tabs.pop(tab.id, None)
            self.uploads.drop_tab(tab.id)

    def _hello(self, tab: Tab) -> dict:
        d = self.pipeline.defaults
        return {"type": "hello", "tab": tab.id, "tasks": list(TASKS), "drive": can_drive(self.pipeline),
                "height": d.height, "width": d.width, "fps": self.drive.fps, "num_frames": d.num_frames,
                "steps": d.steps, "context_frames": d.context_frames,
                "turn_yaw": self.drive.settings.turn_yaw, "max_speed": self.drive.settings.max_speed}

    async def _handle(self, tab: Tab, text: str) -> None:
        """One message from the page; a bad one is answered with an error message, never a closed socket."""
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("a message is a JSON object with a type")
            kind = message["type"]
            if kind == "task":
                request = TaskRequest.from_message(message["fields"])
                tab.task_token.cancel()  # one task per tab: a new one replaces the old
                tab.task_token = CancelToken()
                tab.spawn(self._run_task(tab, request, tab.task_token))
            elif kind == "cancel_task":
                tab.task_token.cancel()
            elif tab.player is None:
                raise ValueError("this pipeline cannot drive (its actions are not (yaw change, speed))")
            elif kind == "key":
                if message["key"] not in KEYS:
                    raise ValueError(f"unknown key {message['key']!r}")
                await tab.player.key(message["key"], bool(message["down"]))
            elif kind == "release_all":
                await tab.player.release_all()
            elif kind == "play":
                await tab.player.set_playing(bool(message["playing"]))
            elif kind == "reset":
                tab.spawn(self._reset(tab, message))
            else:
                raise ValueError(f"unknown message type {kind!r}")
        except json.JSONDecodeError:
            await tab.send({"type": "error", "message": "a message is a JSON object with a type"})
        except (ValueError, KeyError, TypeError) as error:
            await tab.send({"type": "error", "message": _one_line(error)})

    async def _reset(self, tab: Tab, message: dict) -> None:
        try:
            seed = _seed(message.get("seed", 0))
            if "upload" in message:
                frame = self.uploads.get(tab.id, str(message["upload"]))[0]
            else:
                frame = world_frame(self.pipeline, seed)
            await tab.player.reset(frame, seed=seed)
        except ValueError as error:
            await tab.send({"type": "error", "message": f"reset: {_one_line(error)}"})

    async def _run_task(self, tab: Tab, request: TaskRequest, token: CancelToken) -> None:
        loop = asyncio.get_running_loop()
        steps = request.steps or self.pipeline.defaults.steps

        def run() -> object:
            part = 0  # the sampler runs once per window of a rollout, once per span of a long edit

            def progress(step: int, tokens: object) -> None:
                nonlocal part
                turn.between_steps()
                part += step == 0
                message = {"type": "progress", "task": request.task, "part": part, "step": step + 1,
                           "steps": steps}
                asyncio.run_coroutine_threadsafe(tab.send(message), loop)

            with self.turns.turn(token) as turn:
                return run_request(self.pipeline, request, lambda upload: self.uploads.get(tab.id, upload),
                                   progress)

        await tab.send({"type": "task_state", "task": request.task, "state": "running"})
        try:
            output = await loop.run_in_executor(self.executor, run)
            name = f"{next(self._results):04d}-{request.task}-{secrets.token_hex(3)}"
            paths = await run_in_threadpool(write_result, output, request, self.out_dir / "results" / name,
                                            self.drive.fps)
        except Cancelled:
            await tab.send({"type": "task_state", "task": request.task, "state": "cancelled"})
            return
        except Exception as error:  # the page gets one line and the server keeps serving
            if not isinstance(error, ValueError | UploadError):
                log.exception("task %s failed", request.task)
            await tab.send({"type": "task_state", "task": request.task, "state": "failed"})
            await tab.send({"type": "error", "message": f"{request.task} failed: {_one_line(error)}"})
            return
        frames = output.generation.frames
        files = {key: f"/results/{name}/{path}" for key, path in paths.items()}
        await tab.send({"type": "result", "task": request.task, "frames": len(frames), "height": frames.shape[1],
                        "width": frames.shape[2], "files": files})


def write_frames(pngs: list[bytes], path: Path, fps: float) -> None:
    """A video of PNG frames (the drive as it was shown)."""
    write_video(path, (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs), fps)


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {value!r}")
    return value


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.strip("'\"") if isinstance(error, KeyError) else text


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port) (port 0: any free one); OSError in one line when it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def address(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: Starlette, listener: socket.socket, ready: Callable[[uvicorn.Server], None] = lambda server: None
          ) -> None:
    """Serve `app` on the bound `listener` until interrupted (or the server's should_exit is set)."""
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    ready(server)
    server.run(sockets=[listener])
