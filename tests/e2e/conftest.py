"""End-to-end fixtures: a real ComfyUI with this pack and the tiny models, and a real Chromium.

Why a real server and browser: the unit tests cannot see what only the frontend does (widget
names and order, serialize flags, import paths under /extensions/<folder>/, routes under /api/,
the template browser, the node search, the progress bar). Everything here is skipped unless
WANMETER_COMFYUI points at a ComfyUI checkout (main.py). tools/e2e.sh sets it all up.

Environment:
  WANMETER_COMFYUI        ComfyUI checkout (required)
  WANMETER_COMFY_PYTHON   python that runs ComfyUI (default <checkout>/../comfy-venv/bin/python,
                          else this interpreter)
  WANMETER_CHROMIUM       Chromium binary (default /usr/bin/chromium, else `chromium` on PATH)
  WANMETER_FRONT_END_ROOT a frontend's static folder, served instead of the venv's (--front-end-root)
  WANMETER_FRONTEND       that frontend's version, names the artifacts folder
  WANMETER_DOCS_IMG       1: write the README/docs screenshots into docs/img/
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
# One folder per frontend (tools/e2e.sh runs the suite once per frontend version).
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / (os.environ.get("WANMETER_FRONTEND") or "default")
DOCS_IMG = REPO / "docs" / "img"
PACK_FOLDER = "comfyui-wanmeter"  # the folder name users get from the registry; the template browser shows it

# The bundled workflows use the official file names; the tiny fixture that stands in for each.
OFFICIAL_TO_TINY = {
    "diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": "dit_t2v_high_fp8_scaled",
    "diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": "dit_t2v_low_fp8_scaled",
    "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": "dit_i2v_high_fp8_scaled",
    "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": "dit_i2v_low_fp8_scaled",
    "diffusion_models/wan2.2_ti2v_5B_fp16.safetensors": "dit_ti2v",
    "diffusion_models/wan2.2_s2v_14B_fp8_scaled.safetensors": "s2v_14b_fp8_scaled",
    "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": "umt5_fp8_scaled",
    "vae/wan_2.1_vae.safetensors": "vae_wan21",
    "vae/wan2.2_vae.safetensors": "vae_wan22",
    "audio_encoders/wav2vec2_large_english_fp16.safetensors": "wav2vec2_large",
}
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "audio_encoders")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]

# Console noise that is not ours, each checked by what it is (not by "any error"):
#  - 404s for files ComfyUI probes for and a fresh user folder does not have;
#  - the release check against api.comfy.org (no network here);
#  - a TypeError frontend 1.27.10 throws while registering settings at start-up (it happens
#    with no custom nodes at all: reproduced with --disable-all-custom-nodes).
BENIGN_404_PATHS = ("/user.css", "/api/userdata/user.css", "/favicon.ico", "/api/userdata?dir=workflows",
                    "/api/userdata?dir=subgraphs", "/api/userdata/comfy.templates.json", "/api/settings/",
                    # routes a current frontend (1.58.1) asks for that the 0.3.64 server predates
                    "/api/global_subgraphs", "/api/jobs?",
                    # ... and a file it asks the templates package for, which 0.3.64's pinned one lacks
                    "/templates/index_logo.json")
# Console errors a current frontend logs about those missing routes (checked by their own text).
BENIGN_CONSOLE = ("[Jobs API] Error fetching jobs: JobsApiError: Failed to fetch jobs: 404",
                  "Failed to fetch queue: JobsApiError: Failed to fetch jobs: 404")
BENIGN_OFFLINE_HOSTS = ("api.comfy.org",)
BENIGN_PAGEERRORS = (("Cannot read properties of undefined (reading 'id')", "addSetting"),)


def _env_skip_reason() -> str | None:
    checkout = os.environ.get("WANMETER_COMFYUI")
    if not checkout:
        return "end-to-end tests need a ComfyUI checkout: set WANMETER_COMFYUI (tools/e2e.sh does everything)"
    if not (Path(checkout) / "main.py").is_file():
        return f"WANMETER_COMFYUI={checkout} has no main.py: point it at a ComfyUI checkout"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "end-to-end tests need Python playwright in the test interpreter (pip install playwright)"
    if chromium_path() is None:
        return "end-to-end tests need Chromium (apt-get install chromium) or WANMETER_CHROMIUM"
    return None


def chromium_path() -> str | None:
    for p in (os.environ.get("WANMETER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def comfy_python(checkout: Path) -> str:
    p = os.environ.get("WANMETER_COMFY_PYTHON")
    if p:
        return p
    venv = checkout.resolve().parent / "comfy-venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ARG001
    reason = _env_skip_reason()
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


# ---------------------------------------------------------------- the server

@dataclass
class Comfy:
    url: str
    proc: subprocess.Popen
    base: Path
    output: Path
    models: Path
    log: Path

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def post(self, path: str, body: dict | None = None, timeout: float = 10) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
        return json.loads(raw) if raw.strip() else None

    def rss_bytes(self) -> int:
        """Resident memory of the ComfyUI process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def videos(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.suffix.lower() in (".mp4", ".webm", ".webp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / rate))) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def _write_png(path: Path, w: int = 64, h: int = 64) -> None:
    """A small gradient PNG without PIL (this interpreter may not have it)."""
    import zlib

    rows = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 4 % 256, y * 4 % 256, 128)) for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _workflow_files() -> dict[str, str]:
    """Every file name the bundled workflows' loaders and LoadImage/LoadAudio nodes ask for."""
    names: dict[str, str] = {}
    for wf in WORKFLOWS:
        for n in json.loads(wf.read_text(encoding="utf-8"))["nodes"]:
            for v in n.get("widgets_values") or []:
                if isinstance(v, str) and v.endswith((".safetensors", ".gguf")):
                    names[v] = wf.name
    return names


def _layout_models(models: Path) -> None:
    from wanmeter.tiny import ensure_tiny_models

    tiny = ensure_tiny_models(names=sorted(set(OFFICIAL_TO_TINY.values())))
    for rel, fixture in OFFICIAL_TO_TINY.items():
        dest = models / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(tiny[fixture])
    for folder in MODEL_FOLDERS:
        (models / folder).mkdir(parents=True, exist_ok=True)
    known = {rel.split("/", 1)[1] for rel in OFFICIAL_TO_TINY}
    missing = {k: v for k, v in _workflow_files().items() if k not in known}
    assert not missing, f"workflows use model files with no tiny stand-in; add them to OFFICIAL_TO_TINY: {missing}"


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> Comfy:
    checkout = Path(os.environ["WANMETER_COMFYUI"]).resolve()
    (ARTIFACTS / "ignored_console.txt").unlink(missing_ok=True)
    root = tmp_path_factory.mktemp("comfy_e2e")
    base, models, output = root / "base", root / "models", root / "output"
    for d in (base / "custom_nodes", base / "input", base / "user", base / "temp", output):
        d.mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    _write_png(base / "input" / "example.png")
    _write_wav(base / "input" / "speech.wav")
    _layout_models(models)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("wanmeter_e2e:\n    base_path: " + str(models) + "\n"
                    + "".join(f"    {f}: {f}/\n" for f in MODEL_FOLDERS), encoding="utf-8")
    port = _free_port()
    log = root / "comfyui.log"
    cmd = [comfy_python(checkout), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--base-directory", str(base), "--output-directory", str(output),
           "--extra-model-paths-config", str(yaml), "--database-url", "sqlite:///:memory:"]
    if os.environ.get("WANMETER_FRONT_END_ROOT"):  # another frontend (tools/e2e.sh installs 1.58.1 for this)
        cmd += ["--front-end-root", os.environ["WANMETER_FRONT_END_ROOT"]]
    # MALLOC_MMAP_THRESHOLD_ fixed at 64 KiB: every tensor-sized block is mmapped and unmapped on
    # free, so the process's RSS tracks live memory (glibc's default threshold grows after the
    # first large free, and freed heap memory then stays resident). The interrupt test reads RSS.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", MALLOC_MMAP_THRESHOLD_="65536")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=checkout, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    srv = Comfy(f"http://127.0.0.1:{port}", proc, base, output, models, log)
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{srv.log_tail()}")
            try:
                info = srv.get("/object_info", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.time() > deadline:
                    pytest.fail(f"ComfyUI did not answer /object_info within 180 s:\n{srv.log_tail()}")
                time.sleep(1)
        assert "WanMeterEstimator" in info, f"the pack did not load in ComfyUI:\n{srv.log_tail(120)}"
        # A returning user: no first-run templates dialog over the canvas; no minimap over the
        # screenshots (set before any page loads: turning it off later makes frontend 1.27.10 log
        # "Attempted to cleanup event listeners for graph that was never set up").
        srv.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "comfyui.log")


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="session")
def browser(comfy):  # noqa: ARG001 - start the server first: a failed start needs no browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (its own --user-data-dir).
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Console:
    """Console errors, page errors and failed requests of one page, with the benign ones set aside."""
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)

    def on_console(self, msg) -> None:  # noqa: ANN001
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "") or ""
        text = msg.text
        if "Failed to load resource" in text:
            path = url.split("//", 1)[-1]
            path = path[path.find("/"):] if "/" in path else path
            if "404" in text and path.startswith(BENIGN_404_PATHS):
                self.ignored.append(f"{text} [{url}]")
                return
            if any(h in url for h in BENIGN_OFFLINE_HOSTS):
                self.ignored.append(f"{text} [{url}]")
                return
        if text.startswith(BENIGN_CONSOLE):
            self.ignored.append(f"{text.splitlines()[0]} [{url}]")
            return
        self.errors.append(f"console.error: {text} [{url}]")

    def on_pageerror(self, err) -> None:  # noqa: ANN001
        stack = getattr(err, "stack", None) or str(err)
        if any(a in stack and b in stack for a, b in BENIGN_PAGEERRORS):
            self.ignored.append(f"pageerror: {stack.splitlines()[0]}")
            return
        self.errors.append(f"pageerror: {stack}")

    def on_response(self, resp) -> None:  # noqa: ANN001
        u = resp.url
        if resp.status >= 400 and ("/wanmeter/" in u or f"/{PACK_FOLDER}/" in u):
            self.bad_responses.append(f"{resp.status} {u}")

    def check(self) -> None:
        problems = self.errors + [f"HTTP {r}" for r in self.bad_responses]
        assert not problems, "browser errors:\n" + "\n".join(problems)


class UI:
    """One ComfyUI tab, driven the way a user does where that can be simulated."""

    def __init__(self, page, comfy: Comfy, console: Console) -> None:  # noqa: ANN001
        self.page, self.comfy, self.console = page, comfy, console

    # -- start-up
    def open(self) -> "UI":
        self.page.goto(self.comfy.url)
        self.page.wait_for_function(
            "() => window.app && app.graph && app.extensionManager && window.LiteGraph"
            " && LiteGraph.registered_node_types['WanMeterEstimator']"
            " && (app.extensions || []).some(e => e.name === 'WanMeter.Estimate')", timeout=90_000)
        # Record every execution message the frontend's websocket delivers.
        self.page.evaluate("""() => {
          window.__wm_events = [];
          const api = window.comfyAPI.api.api;
          for (const t of ['progress', 'executing', 'executed', 'execution_start', 'execution_success',
                           'execution_error', 'execution_interrupted', 'execution_cached'])
            api.addEventListener(t, (e) => window.__wm_events.push({type: t, t: Date.now(), detail: e.detail}));
        }""")
        return self

    # -- loading workflows
    def drop_file(self, path: Path) -> None:
        """A real drop event on the canvas, with a DataTransfer holding the file (what a drag from the
        file manager delivers)."""
        self.page.evaluate("""([text, name]) => {
          const dt = new DataTransfer();
          dt.items.add(new File([text], name, {type: 'application/json'}));
          const target = document.querySelector('#graph-canvas');
          const r = target.getBoundingClientRect();
          const at = {bubbles: true, cancelable: true, dataTransfer: dt,
                      clientX: r.x + r.width / 2, clientY: r.y + r.height / 2};
          for (const t of ['dragenter', 'dragover', 'drop']) target.dispatchEvent(new DragEvent(t, at));
        }""", [path.read_text(encoding="utf-8"), path.name])

    def open_template(self, name: str) -> None:
        """Sidebar Templates -> the pack's category under Custom Nodes -> the workflow's card."""
        self.page.get_by_role("button", name="Templates").first.click()
        dialog = self.page.get_by_role("dialog")
        dialog.get_by_text(PACK_FOLDER, exact=True).first.click()
        dialog.get_by_text(name, exact=True).first.click()
        dialog.wait_for(state="hidden", timeout=20_000)

    def wait_for_graph(self, workflow: dict, timeout: float = 20_000) -> None:
        want = sorted(n["type"] for n in workflow["nodes"])
        self.page.wait_for_function(
            "(want) => JSON.stringify(app.graph._nodes.map(n => n.type).sort()) === JSON.stringify(want)",
            arg=want, timeout=timeout)

    def graph_problems(self, workflow: dict) -> list[str]:
        """Unknown node types, nodes the frontend flagged, widget values that did not land where saved."""
        # `values`: what the frontend would save now (save -> load -> save must round-trip).
        got = self.page.evaluate("""() => { const saved = app.graph.serialize().nodes;
          return app.graph._nodes.map(n => ({
            id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type],
            has_errors: !!n.has_errors,
            values: (saved.find(s => String(s.id) === String(n.id)) || {}).widgets_values })); }""")
        by_id = {str(n["id"]): n for n in got}  # frontend 1.58.1 keeps dropped workflows' ids as strings
        problems = []
        for n in workflow["nodes"]:
            g = by_id.get(str(n["id"]))
            if g is None:
                problems.append(f"node {n['id']} {n['type']} missing from the graph")
                continue
            if not g["known"] or g["has_errors"]:
                problems.append(f"node {n['id']} {n['type']}: unknown type or flagged by the frontend")
            want = n.get("widgets_values")
            if isinstance(want, list) and not _same_values(want, g["values"] or []):
                problems.append(f"node {n['id']} {n['type']}: widgets {g['values']} != saved {want}")
        missing_dialog = self.page.get_by_text("Some Nodes Are Missing")
        if missing_dialog.count() and missing_dialog.first.is_visible():
            problems.append("the frontend shows its missing-nodes dialog")
        return problems

    # -- widgets and the estimate
    def node_id(self, type_: str) -> int:
        return self.page.evaluate("(t) => app.graph._nodes.find(n => n.type === t).id", type_)

    def set_widget(self, node_type: str, name: str, value: Any) -> None:
        """Set a widget the way the canvas does on an edit: widget.setValue (value, callback, the
        node's onWidgetChanged, graph version bump)."""
        ok = self.page.evaluate("""([t, name, v]) => {
          const n = app.graph._nodes.find(n => n.type === t);
          const w = n && (n.widgets || []).find(w => w.name === name);
          if (!w) return false;
          if (typeof w.setValue === 'function') w.setValue(v, {node: n, canvas: app.canvas});
          else { w.value = v; w.callback && w.callback(v, app.canvas, n); }
          app.graph.setDirtyCanvas(true, true);
          return true;
        }""", [node_type, name, value])
        assert ok, f"{node_type} has no widget {name!r}"

    def widget_value(self, node_type: str, name: str) -> Any:
        return self.page.evaluate("""([t, name]) => {
          const n = app.graph._nodes.find(n => n.type === t);
          const w = n && (n.widgets || []).find(w => w.name === name);
          return w ? w.value : null; }""", [node_type, name])

    # The estimator draws its view on the canvas; after each paint the glue leaves the strings it
    # drew in node.wanmeterView.texts (one per fillText): what the tests read.
    _VIEW_JS = """() => {
          const n = app.graph._nodes.find(n => n.type === 'WanMeterEstimator');
          if (n) n.setDirtyCanvas && n.setDirtyCanvas(true, true);
          if (n && n.wanmeterView) return n.wanmeterView.texts.join('\\n');
          // (the text widget of the extension before issue 14: lets the tests run against it too)
          const w = n && (n.widgets || []).find(w => w.name === 'estimate');
          return w ? (w.element ? w.element.value : w.value) : null; }"""

    def estimate_text(self) -> str | None:
        """The text the estimator node drew at its last paint (one line per string drawn)."""
        return self.page.evaluate(self._VIEW_JS)

    def wait_estimate(self, contains: str | None = None, differs_from: str | None = None,
                      absent: str | None = None, timeout: float = 20_000) -> str:
        self.page.wait_for_function("""([contains, prev, absent]) => {
          const n = app.graph._nodes.find(n => n.type === 'WanMeterEstimator');
          if (!n) return false;
          app.canvas.setDirty(true, true);
          const old = (n.widgets || []).find(w => w.name === 'estimate');
          const v = n.wanmeterView ? n.wanmeterView.texts.join('\\n')
                  : old ? (old.element ? old.element.value : old.value) : '';
          if (!v || /waiting for an estimate/.test(v)) return false;
          if (contains !== null && !v.includes(contains)) return false;
          if (absent !== null && v.includes(absent)) return false;
          if (prev !== null && v === prev) return false;
          return true; }""", arg=[contains, differs_from, absent], timeout=timeout)
        return self.estimate_text()

    def click_estimate_details(self) -> None:
        """A real click on the estimator's "details" toggle (where the view drew it)."""
        self.show_graph(scale=1.0, left_of="WanMeterEstimator", top=40, top_of="WanMeterEstimator")
        at = self.page.evaluate("""() => {
          const n = app.graph._nodes.find(n => n.type === 'WanMeterEstimator');
          const v = n.wanmeterView, h = v.hits.details;
          const c = app.canvas, r = c.canvas.getBoundingClientRect(), s = c.ds.scale;
          return [r.x + (n.pos[0] + h.x + 20 + c.ds.offset[0]) * s,
                  r.y + (n.pos[1] + v.top + h.y + h.h / 2 + c.ds.offset[1]) * s]; }""")
        self.page.mouse.click(at[0], at[1])
        self.page.wait_for_timeout(200)

    def save_docs_image(self, shot: Path, name: str) -> None:
        """With WANMETER_DOCS_IMG=1, the screenshot also goes to docs/img/ (the README's pictures)."""
        if os.environ.get("WANMETER_DOCS_IMG") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, DOCS_IMG / name)

    def badge(self, node_id: int) -> str:
        """The badge text the sampler drew on its title at the last paint."""
        return self.page.evaluate("(id) => app.graph.getNodeById(id).wanmeterBadge || ''", node_id)

    def show_graph(self, scale: float = 0.8, left_of: str | None = None, top: float = 10,
                   top_of: str | None = None) -> None:
        """Scroll and zoom the canvas for a screenshot: the graph's top left corner (or the node of
        type `left_of`) at the top left, at `scale` (keep it above LiteGraph's low-quality zoom, so
        widget text is drawn)."""
        self.page.evaluate("""([s, left, top, topOf]) => {
          const ns = app.graph._nodes;
          const gs = app.graph._groups || app.graph.groups || [];
          const gpos = (g) => g._bounding || g.pos;
          let x = Math.min(...ns.map(n => n.pos[0]), ...gs.map(g => gpos(g)[0]));
          let y = Math.min(...ns.map(n => n.pos[1] - 40), ...gs.map(g => gpos(g)[1]));
          const n = left && ns.find(n => n.type === left);
          if (n) x = n.pos[0] - 20;
          const t = topOf && ns.find(n => n.type === topOf);
          if (t) y = t.pos[1] - 40;
          app.canvas.ds.scale = s;
          app.canvas.ds.offset[0] = -x + 10 / s;
          app.canvas.ds.offset[1] = -y + top / s;
          app.canvas.setDirty(true, true); }""", [scale, left_of, top, top_of])
        self.page.wait_for_timeout(300)

    def node_box(self, type_: str) -> dict:
        """The node's rectangle on the page (title bar included), in CSS pixels."""
        return self.page.evaluate("""(t) => {
          const n = app.graph._nodes.find(n => n.type === t);
          const c = app.canvas, r = c.canvas.getBoundingClientRect(), s = c.ds.scale;
          const th = LiteGraph.NODE_TITLE_HEIGHT || 30;
          return {x: r.x + (n.pos[0] + c.ds.offset[0]) * s, y: r.y + (n.pos[1] - th + c.ds.offset[1]) * s,
                  width: n.size[0] * s, height: (n.size[1] + th) * s}; }""", type_)

    # -- running
    def events(self, types: tuple[str, ...] | None = None) -> list[dict]:
        ev = self.page.evaluate("() => window.__wm_events")
        return [e for e in ev if types is None or e["type"] in types]

    def clear_events(self) -> None:
        self.page.evaluate("() => { window.__wm_events.length = 0; }")

    def click_run(self) -> None:
        self.page.get_by_role("button", name="Run", exact=True).click()

    def wait_done(self, timeout: float = 180_000) -> dict:
        self.page.wait_for_function("""() => window.__wm_events.some(e =>
            ['execution_success', 'execution_error', 'execution_interrupted'].includes(e.type))""", timeout=timeout)
        return next(e for e in self.events() if e["type"] in
                    ("execution_success", "execution_error", "execution_interrupted"))

    def screenshot(self, name: str, clip: dict | None = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), clip=clip)
        return path


def _same_values(want: list, got: list) -> bool:
    # Trailing None values are UI-only widgets that hold nothing (LoadAudio's player and upload
    # button): frontend 1.58.1 keeps one of them fewer than 1.27.10 does.
    while want and want[-1] is None:
        want = want[:-1]
    while got and got[-1] is None:
        got = got[:-1]
    if len(want) != len(got):
        return False
    for a, b in zip(want, got):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            if not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9):
                return False
        elif a != b:
            return False
    return True


@pytest.fixture
def ui(browser, comfy, request):
    console = Console()
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_pageerror)
    page.on("response", console.on_response)
    u = UI(page, comfy, console).open()
    yield u
    if console.ignored:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with open(ARTIFACTS / "ignored_console.txt", "a", encoding="utf-8") as fh:
            fh.write(f"== {request.node.nodeid}\n" + "\n".join(console.ignored) + "\n")
    context.close()
