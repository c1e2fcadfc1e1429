"""`wd play`'s server on the tiny pipeline through starlette's TestClient: the page, a tab's drive over its
WebSocket, uploads (good, malformed, too large, too many pixels), a task from the form to its files, several
tabs at once, a tab closed mid-task, downloads, and no way out of the output directory."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from wd_data import read_video, write_video

from wd_cli.main import cli
from wd_cli.media import read_actions
from wd_cli.play import server as server_module
from wd_cli.play.player import DriveOptions
from wd_cli.play.server import PlayServer
from wd_cli.play.tasks import run_request
from wd_cli.play.uploads import UploadLimits

LIMITS = UploadLimits(max_bytes=300_000, max_pixels=128 * 128, max_frames=40)


@pytest.fixture
def server(tiny_pipeline, tmp_path: Path) -> PlayServer:
    return PlayServer(tiny_pipeline, tmp_path / "out", DriveOptions(fps=40.0), LIMITS)


@pytest.fixture
def client(server: PlayServer):
    with TestClient(server.app()) as client:
        yield client


def receive(ws, kind: str, where=lambda message: True, limit: int = 2000) -> dict:
    """The next message of type `kind` satisfying `where` (frames keep coming meanwhile)."""
    for _ in range(limit):
        message = ws.receive_json()
        if message["type"] == kind and where(message):
            return message
    raise AssertionError(f"no {kind} message in {limit}")


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: decoding it would fail or explode, its header is fine."""
    data = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def video_bytes(path: Path, frames: int = 6, size: tuple[int, int] = (32, 48)) -> bytes:
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8), fps=4)
    return path.read_bytes()


def test_the_page_and_a_tabs_drive(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="view"' in page.text and "<script>" in page.text
    with client.websocket_connect("/ws") as ws:
        hello = receive(ws, "hello")
        assert hello["drive"] and hello["tasks"][0] == "text2video" and (hello["height"], hello["width"]) == (32, 32)
        first = receive(ws, "frame")
        assert first["index"] == 0 and first["image"].startswith("data:image/png;base64,")
        ws.send_json({"type": "key", "key": "left", "down": True})
        assert receive(ws, "held")["action"][0] > 0
        turned = receive(ws, "frame", lambda frame: frame["action"][0] > 0)
        assert turned["index"] > 1
        ws.send_text("not json")
        assert "JSON object" in receive(ws, "error")["message"]
        ws.send_json({"type": "key", "key": "jump", "down": True})
        assert "unknown key" in receive(ws, "error")["message"]
        ws.send_json({"type": "reset", "upload": "not-mine"})
        assert "upload is gone" in receive(ws, "error")["message"]
        ws.send_json({"type": "reset", "seed": 5})
        assert receive(ws, "frame", lambda frame: frame["index"] == 0)["action"] is None
        assert receive(ws, "frame")["index"] == 1


def test_a_drive_downloads_as_mp4_and_csv_of_the_frames_shown(client: TestClient, server: PlayServer) -> None:
    with client.websocket_connect("/ws") as ws:
        tab = receive(ws, "hello")["tab"]
        receive(ws, "frame", lambda frame: frame["index"] >= 4)
        ws.send_json({"type": "play", "playing": False})  # no frame is shown between the two downloads
        assert receive(ws, "playing")["playing"] is False
        assert client.get(f"/drive/{tab}/drive.mp4").status_code == 200
        assert client.get(f"/drive/{tab}/drive.csv").status_code == 200
        assert client.get(f"/drive/{tab}/other.txt").status_code == 404
    folder = server.out_dir / "drives" / tab
    actions = read_actions(folder / "drive.csv")
    frames = read_video(folder / "drive.mp4", num_frames=len(actions))
    assert actions.shape == (len(actions), 2) and len(actions) >= 5 and frames.shape[1:] == (32, 32, 3)
    assert client.get(f"/drive/{tab}/drive.mp4").status_code == 404  # the tab closed


def test_uploads_are_checked_before_decoding_and_bad_ones_get_one_line(client: TestClient, tmp_path: Path) -> None:
    with client.websocket_connect("/ws") as ws:
        tab = receive(ws, "hello")["tab"]

        def upload(data: bytes):
            return client.post(f"/upload?tab={tab}", content=data)

        image = upload(png(np.full((20, 30, 3), 90, np.uint8)))  # smaller than the model's frame: kept as is
        assert image.status_code == 200
        assert image.json()["frames"] == 1 and (image.json()["height"], image.json()["width"]) == (20, 30)
        big = upload(png(np.zeros((100, 120, 3), np.uint8)))  # scaled down to just cover 32x32, aspect kept
        assert (big.json()["height"], big.json()["width"]) == (32, 38)
        video = upload(video_bytes(tmp_path / "clip.mp4"))
        assert video.status_code == 200 and video.json()["frames"] == 6
        for data, status, words in [
            (b"definitely not an image", 400, "cannot read"),
            (png(np.zeros((8, 8, 3), np.uint8))[:40], 400, "cannot read"),  # truncated
            # Pillow's own ceiling or ours, whichever the installed Pillow reaches first: one message.
            (png_claiming(100_000, 100_000), 400, "more than the 16384 pixels a frame may have"),
            (png_claiming(200, 200), 400, "200x200 pixels"),
            (b"", 400, "empty"),
            (b"x" * 400_000, 413, "MiB"),
        ]:
            reply = upload(data)
            assert reply.status_code == status and words in reply.json()["error"], reply.json()
        assert client.post("/upload?tab=unknown", content=b"x").status_code == 400
        # The server still serves this tab.
        assert receive(ws, "frame")["type"] == "frame"


def test_a_task_from_the_form_runs_with_progress_and_its_files_play(client: TestClient, server: PlayServer,
                                                                    tmp_path: Path) -> None:
    with client.websocket_connect("/ws") as ws:
        tab = receive(ws, "hello")["tab"]
        upload = client.post(f"/upload?tab={tab}", content=video_bytes(tmp_path / "clip.mp4")).json()["upload"]
        ws.send_json({"type": "task", "fields": {"task": "inpaint", "video": upload}})
        assert receive(ws, "error")["message"] == "inpaint needs a box drawn on the first frame"
        ws.send_json({"type": "task", "fields": {"task": "inpaint", "video": upload, "box": [0, 0, 16, 24],
                                                 "steps": 2}})
        progress = []
        while (message := ws.receive_json())["type"] != "result":
            assert message["type"] != "error", message
            progress += [message] if message["type"] == "progress" else []
        result = message
    # 6 frames, windows of 4 at frames 0 and 2 decoded together: one part of 2 decoding steps.
    assert [(m["part"], m["step"]) for m in progress] == [(1, 1), (1, 2)]
    assert (result["task"], result["frames"], result["height"], result["width"]) == ("inpaint", 6, 32, 32)
    sheet = client.get(result["files"]["sheet"])
    assert sheet.status_code == 200
    rows = np.asarray(Image.open(io.BytesIO(sheet.content)))
    assert rows.shape == (6 * 32, 3 * 32 + 4, 3)
    mask = rows[:32, 34:66].astype(int)  # frame 0's mask column: the box's tokens tinted magenta
    assert (mask[:16, :16, 0] - mask[:16, :16, 1]).mean() > 60  # red over green: magenta
    assert abs(mask[20:, 20:, 0] - mask[20:, 20:, 1]).mean() < 40  # outside the box: the input as it was
    for key in ("mp4", "output", "mask", "input"):
        assert client.get(result["files"][key]).status_code == 200
    assert all(path.is_relative_to(server.out_dir) for path in server.out_dir.rglob("*"))


def test_several_tabs_drive_at_once(client: TestClient) -> None:
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        tabs = {receive(first, "hello")["tab"], receive(second, "hello")["tab"]}
        assert len(tabs) == 2
        for _ in range(3):
            for ws in (first, second):
                receive(ws, "frame")
        assert receive(first, "frame")["index"] >= 3 and receive(second, "frame")["index"] >= 3


def test_a_tab_closed_mid_task_frees_the_model(client: TestClient, server: PlayServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    steps_run = []

    def counting(pipeline, request, frames_of, callback):
        def counted(step, tokens) -> None:
            steps_run.append(step)
            callback(step, tokens)

        return run_request(pipeline, request, frames_of, counted)

    monkeypatch.setattr(server_module, "run_request", counting)
    with client.websocket_connect("/ws") as ws:
        tab = receive(ws, "hello")["tab"]
        upload = client.post(f"/upload?tab={tab}", content=video_bytes(tmp_path / "long.mp4", frames=40)).json()
        ws.send_json({"type": "task", "fields": {"task": "stylize", "video": upload["upload"], "prompt": "a world",
                                                 "steps": 30}})
        receive(ws, "progress", limit=10_000)
    # 40 frames are 19 windows of 30 steps; the tab went away after the first step, and so does its work.
    deadline = time.monotonic() + 30
    while server.turns.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.turns.queued == 0 and not server.tabs
    assert 1 <= len(steps_run) < 19 * 30 // 2
    time.sleep(0.5)
    assert list((server.out_dir / "results").iterdir()) == []


def test_only_the_page_itself_opens_a_tab(client: TestClient) -> None:
    with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
        assert receive(ws, "hello")["drive"]
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
            ws.receive_json()
    assert refused.value.code == 1008


def test_nothing_outside_the_output_directory_is_served(client: TestClient) -> None:
    for path in ("/results/../../etc/passwd", "/results/%2e%2e/%2e%2e/etc/passwd", "/drive/../../etc/passwd",
                 "/results/..%2f..%2fetc%2fpasswd"):
        reply = client.get(path)
        assert reply.status_code == 404 and "root:" not in reply.text


def test_wd_play_refuses_a_missing_checkpoint_and_a_taken_port_in_one_line(tiny_pipeline_dir, tmp_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["play", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and missing.output.count("\n") == 1 and "does not exist" in missing.output
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(cli, ["play", "--checkpoint", str(tiny_pipeline_dir), "--port", str(port),
                                   "--out", str(tmp_path / "o")])
    assert busy.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.output


def test_wd_play_serves_the_page_at_the_address_it_prints_and_stops_on_ctrl_c(tiny_pipeline_dir, tmp_path) -> None:
    command = [sys.executable, "-m", "wd_cli", "play", "--checkpoint", str(tiny_pipeline_dir), "--port", "0",
               "--out", str(tmp_path / "play")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=environment) as process:
        try:
            line = process.stdout.readline()
            assert line.startswith("wd play: open http://127.0.0.1:"), line
            url = line.split()[3]
            with urllib.request.urlopen(url, timeout=30) as reply:
                assert reply.status == 200 and b'id="view"' in reply.read()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
    assert process.returncode == 0
    assert sorted(path.name for path in (tmp_path / "play").iterdir()) == ["drives", "results", "uploads"]
