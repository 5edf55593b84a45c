"""Write workflows/*.json (ComfyUI UI format) and their .jpg thumbnails from the nodes' INPUT_TYPES.

Why a script: widgets_values are positional, so hand-edited workflows drift when a node gains a
widget. Regenerate after changing a node's inputs:  python tools/make_workflows.py
The pack is imported with the stand-in ComfyUI modules of tests/comfy_stubs.py (no ComfyUI needed).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"

# Native nodes used by the workflows: their widgets / sockets as in ComfyUI 0.3.64
# (comfy_extras/nodes_video.py CreateVideo/SaveVideo, nodes.py LoadImage).
NATIVE: dict[str, dict[str, Any]] = {
    "CreateVideo": {"inputs": [("images", "IMAGE", False), ("audio", "AUDIO", True)], "widgets": ["fps"],
                    "outputs": [("VIDEO", "VIDEO")]},
    "SaveVideo": {"inputs": [("video", "VIDEO", False)], "widgets": ["filename_prefix", "format", "codec"],
                  "outputs": []},
    "LoadImage": {"inputs": [], "widgets": ["image", "upload"], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "LoadAudio": {"inputs": [], "widgets": ["audio", "audioUI", "upload"], "outputs": [("AUDIO", "AUDIO")]},
    "ImageScale": {"inputs": [("image", "IMAGE", False)], "widgets": ["upscale_method", "width", "height", "crop"],
                   "outputs": [("IMAGE", "IMAGE")]},
}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

PROMPTS = {
    "t2v_a14b": "A red fox trots through fresh snow in a birch forest at sunrise, its breath visible in the cold air. "
                "Low tracking shot at the fox's eye level, soft golden light through the trees, shallow depth of field.",
    "i2v_a14b": "The subject in the picture slowly turns toward the camera and smiles; a light breeze moves the hair. "
                "The camera pushes in gently. Natural light, realistic motion.",
    "s2v_14b": "A woman sits at a wooden desk facing the camera and talks calmly, natural gestures, soft window light, "
               "realistic lip movement.",
    "ti2v_5b": "A street musician plays an acoustic guitar in a subway station, commuters walking past in soft focus, "
               "warm tungsten light, handheld camera with gentle sway.",
}

SPECS = {
    "t2v_a14b": {
        "file": "wan22_t2v_a14b", "title": "Wan2.2 T2V-A14B (WanMeter)",
        "model": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        "model_low": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        "weight_dtype": "fp8_e4m3fn", "vae": "wan_2.1_vae.safetensors", "image": None,
    },
    "i2v_a14b": {
        "file": "wan22_i2v_a14b", "title": "Wan2.2 I2V-A14B (WanMeter)",
        "model": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        "model_low": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
        "weight_dtype": "fp8_e4m3fn", "vae": "wan_2.1_vae.safetensors", "image": "required",
    },
    "ti2v_5b": {
        "file": "wan22_ti2v_5b", "title": "Wan2.2 TI2V-5B (WanMeter)",
        "model": "wan2.2_ti2v_5B_fp16.safetensors", "model_low": "none",
        "weight_dtype": "bf16", "vae": "wan2.2_vae.safetensors", "image": "optional",
    },
    "s2v_14b": {
        "file": "wan22_s2v_14b", "title": "Wan2.2 S2V-14B (WanMeter)",
        "model": "wan2.2_s2v_14B_fp8_scaled.safetensors", "model_low": "none",
        "weight_dtype": "fp8_e4m3fn", "vae": "wan_2.1_vae.safetensors", "image": "required",
    },
}
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
AUDIO_ENCODER = "wav2vec2_large_english_fp16.safetensors"

# Where ComfyUI downloads each file (Comfy-Org's repackaged files): the names, urls and folders the
# official Wan2.2 templates give their loaders (PyPI comfyui-workflow-templates-json 0.1.123,
# templates/video_wan2_2_14B_t2v/_i2v/_s2v, _5B_ti2v: each loader's properties.models).
_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODEL_DOWNLOADS: dict[str, tuple[str, str]] = {  # file name -> (ComfyUI models folder, url)
    **{f: ("diffusion_models", f"{_WAN22}/diffusion_models/{f}") for f in (
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
        "wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_s2v_14B_fp8_scaled.safetensors")},
    TEXT_ENCODER: ("text_encoders", f"{_WAN21}/text_encoders/{TEXT_ENCODER}"),
    "wan_2.1_vae.safetensors": ("vae", f"{_WAN22}/vae/wan_2.1_vae.safetensors"),
    "wan2.2_vae.safetensors": ("vae", f"{_WAN22}/vae/wan2.2_vae.safetensors"),
    AUDIO_ENCODER: ("audio_encoders", f"{_WAN22}/audio_encoders/{AUDIO_ENCODER}"),
}
# The widgets of our loaders that name a model file.
MODEL_WIDGETS = {"WanMeterModelLoader": ("model", "model_low_noise"), "WanMeterTextEncoderLoader": ("text_encoder",),
                 "WanMeterVAELoader": ("vae",), "WanMeterS2VAudio": ("audio_encoder",)}


def model_entry(name: str) -> dict[str, str]:
    directory, url = MODEL_DOWNLOADS[name]
    return {"name": name, "url": url, "directory": directory}

# LiteGraph geometry: a node's title bar sits above its pos (NODE_TITLE px); a group's title bar
# is the top GROUP_TITLE px of its bounding. Groups are sized from their member nodes so their
# title never sits under a node and every member (title bar included) is inside.
NODE_TITLE = 30
GROUP_TITLE = 40
GROUP_PAD = 15


def load_pack():
    """Import the pack with stub ComfyUI modules (empty model folders: combos are not checked)."""
    spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", ROOT / "tests" / "comfy_stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    tmp = Path(tempfile.mkdtemp(prefix="wanmeter_wf_"))
    for name, mod in stubs.make_stubs(tmp).items():
        sys.modules.setdefault(name, mod)
    return stubs.import_pack()


def node_layout(cls) -> tuple[list[tuple[str, str, bool]], list[str], list[tuple[str, str]]]:
    """(sockets [(name, type, optional)], widget names in widgets_values order, outputs [(name, type)])."""
    spec = cls.INPUT_TYPES()
    sockets, widgets = [], []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            typ, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            is_widget = isinstance(typ, list) or typ in WIDGET_TYPES
            if is_widget and not opts.get("forceInput"):
                widgets.append(name)
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    widgets.append(f"{name}:control_after_generate")
            else:
                sockets.append((name, typ, section == "optional"))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return sockets, widgets, list(zip(names, cls.RETURN_TYPES))


class Builder:
    def __init__(self, pack) -> None:
        self.pack = pack
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.groups: list[dict[str, Any]] = []

    def layout(self, type_: str):
        if type_ in NATIVE:
            n = NATIVE[type_]
            return n["inputs"], n["widgets"], n["outputs"]
        return node_layout(self.pack.NODE_CLASS_MAPPINGS[type_])

    def add(self, type_: str, values: dict[str, Any], pos, size, *, title: str | None = None, mode: int = 0) -> int:
        nid = len(self.nodes) + 1
        if type_ in FRONTEND_ONLY:
            node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                    "mode": mode, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [values["text"]],
                    "color": "#432", "bgcolor": "#653"}
        else:
            sockets, widgets, outputs = self.layout(type_)
            missing = [w for w in widgets if w not in values]
            if missing:
                raise KeyError(f"{type_}: no value for widgets {missing}")
            node = {
                "id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                "mode": mode,
                "inputs": [{"name": n, "type": t, "link": None, **({"shape": 7} if opt else {})} for n, t, opt in sockets],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_,
                               **({"cnr_id": "comfy-core"} if type_ in NATIVE else {"cnr_id": "comfyui-wanmeter"})},
                "widgets_values": [values[w] for w in widgets],
            }
            files = [values[w] for w in MODEL_WIDGETS.get(type_, ()) if values.get(w) not in (None, "none")]
            if files:  # what the frontend offers to download when the file is missing
                node["properties"]["models"] = [model_entry(f) for f in files]
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def link(self, src: int, out_name: str, dst: int, in_name: str) -> int:
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        oi = next(i for i, o in enumerate(s["outputs"]) if o["name"] == out_name)
        ii = next(i for i, x in enumerate(d["inputs"]) if x["name"] == in_name)
        lid = len(self.links) + 1
        typ = s["outputs"][oi]["type"]
        self.links.append([lid, src, oi, dst, ii, typ])
        s["outputs"][oi]["links"].append(lid)
        d["inputs"][ii]["link"] = lid
        return lid

    def group(self, title: str, members: list[int], color: str) -> None:
        """A group around `members` (node ids): their boxes incl. title bars, plus the group's title bar."""
        nodes = [self.nodes[i - 1] for i in members]
        x0 = min(n["pos"][0] for n in nodes) - GROUP_PAD
        y0 = min(n["pos"][1] for n in nodes) - NODE_TITLE - GROUP_TITLE
        x1 = max(n["pos"][0] + n["size"][0] for n in nodes) + GROUP_PAD
        y1 = max(n["pos"][1] + n["size"][1] for n in nodes) + GROUP_PAD
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def workflow(self, key: str) -> dict[str, Any]:
        for n in self.nodes:
            if "outputs" in n:
                for o in n["outputs"]:
                    if not o["links"]:
                        o["links"] = None
        models: list[dict[str, str]] = []
        for n in self.nodes:
            for m in n.get("properties", {}).get("models", []):
                if m not in models:
                    models.append(m)
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wanmeter/{key}")), "revision": 0,
            "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 60]}, "frontendVersion": "1.27.10"},
            "models": models,
            "version": 0.4,
        }


LOADER_SPEED_OFF = {"fp8_compute": False, "compile": False}
SAMPLER_SPEED_OFF = {"step_cache": "none", "cache_threshold": 0.0, "num_gpus": 1}
ESTIMATOR = {"gpu": "auto", "price_per_hour": 0.0, "videos_per_month": 100, "budget_gib": 0.0}
# The estimator sits below the (first) sampler, where the user edits steps and size: inside the
# workflow's saved view on a 1366 px wide screen. The web extension sets its height to what it draws.
ESTIMATOR_POS, ESTIMATOR_SIZE = (900, 720), (440, 470)


def build(pack, key: str) -> dict[str, Any]:
    from wanmeter.variants import variant as facts

    if key == "s2v_14b":
        return build_s2v(pack)
    v, sp = facts(key), SPECS[key]
    w, h = v["sizes"][0]
    cfg = list(v["default_cfg"]) + list(v["default_cfg"])[:1]
    b = Builder(pack)
    loader = b.add("WanMeterModelLoader", {
        "model": sp["model"], "weight_dtype": sp["weight_dtype"], "compute_dtype": "bf16", "offload": "auto",
        "blocks_to_stream": 0, "attention": "auto", **LOADER_SPEED_OFF, "model_low_noise": sp["model_low"]},
        (0, 0), (380, 280))
    te = b.add("WanMeterTextEncoderLoader", {"text_encoder": TEXT_ENCODER, "device": "gpu", "dtype": "bf16"},
               (0, 320), (380, 110))
    vae = b.add("WanMeterVAELoader", {"vae": sp["vae"], "tiled": False, "dtype": "bf16"}, (0, 470), (380, 110))
    from_text = pack.nodes.text.OFFICIAL_NEGATIVE_PROMPT
    enc = b.add("WanMeterTextEncode", {"positive": PROMPTS[key], "negative": from_text}, (430, 0), (420, 380))
    img = None
    if sp["image"]:
        img = b.add("LoadImage", {"image": "example.png", "upload": "image"}, (430, 420), (320, 320),
                    mode=0 if sp["image"] == "required" else 4)
    sampler = b.add("WanMeterSampler", {
        "width": w, "height": h, "frames": v["default_frames"], "steps": v["default_steps"],
        "cfg_high": float(cfg[0]), "cfg_low": float(cfg[1]), "shift": float(v["default_shift"]), "seed": 42,
        "seed:control_after_generate": "fixed", "batch_size": 1, "scheduler": "unipc", "boundary": 0.0,
        "denoise": 1.0, **SAMPLER_SPEED_OFF}, (900, 0), (340, 560))
    dec = b.add("WanMeterVAEDecode", {"tiled": "auto"}, (1290, 0), (300, 100))
    cv = b.add("CreateVideo", {"fps": float(v["fps"])}, (1290, 140), (300, 80))
    sv = b.add("SaveVideo", {"filename_prefix": f"video/WanMeter_{key}", "format": "auto", "codec": "auto"},
               (1290, 260), (300, 360))
    est = b.add("WanMeterEstimator", ESTIMATOR, ESTIMATOR_POS, ESTIMATOR_SIZE)
    note = ("Models (ComfyUI folders):\n"
            f"- diffusion_models: {sp['model']}" + (f", {sp['model_low']}" if sp["model_low"] != "none" else "") + "\n"
            f"- text_encoders: {TEXT_ENCODER}\n- vae: {sp['vae']}\n\n"
            "The WanMeter Estimator shows peak VRAM, time and cost for these settings before you queue; "
            "change the GPU there to compare. Official defaults: "
            f"{w}x{h}, {v['default_frames']} frames, {v['default_steps']} steps, shift {v['default_shift']}.")
    if sp["image"] == "optional":
        note += "\n\nImage-to-video: un-bypass Load Image (Ctrl+B) to use it as the first frame."
    note_id = b.add("Note", {"text": note}, (0, 620), (380, 260))

    b.link(loader, "model", sampler, "model")
    b.link(te, "text_encoder", enc, "text_encoder")
    b.link(enc, "positive", sampler, "positive")
    b.link(enc, "negative", sampler, "negative")
    if img is not None:
        b.link(img, "IMAGE", sampler, "start_image")
        b.link(vae, "vae", sampler, "vae")
    b.link(sampler, "LATENT", dec, "samples")
    b.link(vae, "vae", dec, "vae")
    b.link(dec, "IMAGE", cv, "images")
    b.link(cv, "VIDEO", sv, "video")

    b.group("1. Load models", [loader, te, vae, note_id], "#3f789e")
    b.group("2. Prompt" + (" and first frame" if img else ""), [enc] + ([img] if img else []), "#a1309b")
    b.group("3. Sample and save", [sampler, dec, cv, sv], "#b06634")
    b.group("Estimate: VRAM / time / cost", [est], "#8A8")
    return b.workflow(key)


def build_s2v(pack) -> dict[str, Any]:
    """S2V-14B: LoadImage + LoadAudio -> WanMeter S2V Audio / Sampler -> CreateVideo (with the audio)."""
    from wanmeter.variants import variant as facts

    key = "s2v_14b"
    v, sp = facts(key), SPECS[key]
    w, h = 832, 480  # the official 480p size (sizes[2]): 1024x704 needs far more VRAM per clip
    b = Builder(pack)
    loader = b.add("WanMeterModelLoader", {
        "model": sp["model"], "weight_dtype": sp["weight_dtype"], "compute_dtype": "bf16", "offload": "none",
        "blocks_to_stream": 0, "attention": "auto", **LOADER_SPEED_OFF, "model_low_noise": "none"},
        (0, 0), (380, 280))
    te = b.add("WanMeterTextEncoderLoader", {"text_encoder": TEXT_ENCODER, "device": "gpu", "dtype": "bf16"},
               (0, 320), (380, 110))
    vae = b.add("WanMeterVAELoader", {"vae": sp["vae"], "tiled": False, "dtype": "bf16"}, (0, 470), (380, 110))
    enc = b.add("WanMeterTextEncode", {"positive": PROMPTS[key], "negative": pack.nodes.text.OFFICIAL_NEGATIVE_PROMPT},
                (430, 0), (420, 330))
    img = b.add("LoadImage", {"image": "example.png", "upload": "image"}, (430, 370), (320, 320))
    aud = b.add("LoadAudio", {"audio": "speech.wav", "audioUI": None, "upload": None}, (430, 730), (320, 140))
    s2a = b.add("WanMeterS2VAudio", {"audio_encoder": AUDIO_ENCODER, "audio_scale": 1.0, "device": "gpu", "clips": 0},
                (900, 600), (340, 170))
    sampler = b.add("WanMeterS2VSampler", {
        "width": w, "height": h, "steps": v["default_steps"], "cfg": float(v["default_cfg"][0]),
        "shift": float(v["default_shift"]), "seed": 42, "seed:control_after_generate": "fixed",
        "drop_first_motion": True}, (900, 0), (340, 560))
    cv = b.add("CreateVideo", {"fps": float(v["fps"])}, (1290, 0), (300, 80))
    sv = b.add("SaveVideo", {"filename_prefix": f"video/WanMeter_{key}", "format": "auto", "codec": "auto"},
               (1290, 120), (300, 360))
    est = b.add("WanMeterEstimator", ESTIMATOR, (900, 860), ESTIMATOR_SIZE)  # below S2V Audio
    sizes = ", ".join(f"{a}x{c}" for a, c in v["sizes"])
    note = ("Models (ComfyUI folders):\n"
            f"- diffusion_models: {sp['model']}\n- text_encoders: {TEXT_ENCODER}\n- vae: {sp['vae']}\n"
            f"- audio_encoders: {AUDIO_ENCODER}\n\n"
            "Speech to video: the reference image is animated clip by clip (80 frames = 5 s at 16 fps each); "
            "clips = 0 on WanMeter S2V Audio covers the whole audio. The output video keeps the audio. "
            f"Official defaults: {v['default_steps']} steps, CFG {v['default_cfg'][0]:g}, shift {v['default_shift']:g}; "
            f"sizes {sizes}. Connect a pose video (IMAGE, 16 fps) to pose_video to drive the motion.\n\n"
            "The WanMeter Estimator shows VRAM, time and cost per 5 s clip (or for the clips you set).")
    note_id = b.add("Note", {"text": note}, (0, 620), (380, 300))

    b.link(loader, "model", sampler, "model")
    b.link(te, "text_encoder", enc, "text_encoder")
    b.link(enc, "positive", sampler, "positive")
    b.link(enc, "negative", sampler, "negative")
    b.link(img, "IMAGE", sampler, "ref_image")
    b.link(vae, "vae", sampler, "vae")
    b.link(aud, "AUDIO", s2a, "audio")
    b.link(s2a, "s2v_audio", sampler, "s2v_audio")
    b.link(sampler, "frames", cv, "images")
    b.link(sampler, "audio", cv, "audio")
    b.link(cv, "VIDEO", sv, "video")

    b.group("1. Load models", [loader, te, vae, note_id], "#3f789e")
    b.group("2. Prompt, face and voice", [enc, img, aud], "#a1309b")
    b.group("3. Sample and save", [sampler, s2a, cv, sv], "#b06634")
    b.group("Estimate: VRAM / time / cost", [est], "#8A8")
    return b.workflow(key)


DRAFT = {"file": "wan22_draft_then_final", "draft_size": (832, 480), "final_size": (1280, 720), "denoise": 0.3}


def build_draft(pack) -> dict[str, Any]:
    """T2V-A14B draft at 832x480 (official settings) -> ImageScale to 1280x720 -> WanMeter VAE Encode
    -> a second WanMeter Sampler with denoise 0.3 (only the low-noise expert runs) -> video."""
    from wanmeter.draft import refine_steps
    from wanmeter.variants import variant as facts

    key = "t2v_a14b"
    v, sp = facts(key), SPECS[key]
    (dw, dh), (fw, fh), dn = DRAFT["draft_size"], DRAFT["final_size"], DRAFT["denoise"]
    cfg = [float(c) for c in v["default_cfg"]]
    b = Builder(pack)
    loader = b.add("WanMeterModelLoader", {
        "model": sp["model"], "weight_dtype": sp["weight_dtype"], "compute_dtype": "bf16", "offload": "auto",
        "blocks_to_stream": 0, "attention": "auto", **LOADER_SPEED_OFF, "model_low_noise": sp["model_low"]},
        (0, 0), (380, 280))
    te = b.add("WanMeterTextEncoderLoader", {"text_encoder": TEXT_ENCODER, "device": "gpu", "dtype": "bf16"},
               (0, 320), (380, 110))
    vae = b.add("WanMeterVAELoader", {"vae": sp["vae"], "tiled": False, "dtype": "bf16"}, (0, 470), (380, 110))
    enc = b.add("WanMeterTextEncode", {"positive": PROMPTS[key], "negative": pack.nodes.text.OFFICIAL_NEGATIVE_PROMPT},
                (430, 0), (420, 380))

    def sampler(w: int, h: int, steps: int, denoise: float, pos, title: str) -> int:
        return b.add("WanMeterSampler", {
            "width": w, "height": h, "frames": v["default_frames"], "steps": steps, "cfg_high": cfg[0],
            "cfg_low": cfg[1], "shift": float(v["default_shift"]), "seed": 42, "seed:control_after_generate": "fixed",
            "batch_size": 1, "scheduler": "unipc", "boundary": 0.0, "denoise": denoise, **SAMPLER_SPEED_OFF},
            pos, (340, 560), title=title)

    draft = sampler(dw, dh, v["default_steps"], 1.0, (900, 0), f"Draft {dw}x{dh}")
    ddec = b.add("WanMeterVAEDecode", {"tiled": "auto"}, (1290, 0), (300, 100))
    dcv = b.add("CreateVideo", {"fps": float(v["fps"])}, (1290, 140), (300, 80))
    dsv = b.add("SaveVideo", {"filename_prefix": "video/WanMeter_draft", "format": "auto", "codec": "auto"},
                (1290, 260), (300, 360))
    scale = b.add("ImageScale", {"upscale_method": "bicubic", "width": fw, "height": fh, "crop": "center"},
                  (1660, 0), (300, 160))
    venc = b.add("WanMeterVAEEncode", {}, (1660, 200), (300, 100))
    final = sampler(fw, fh, refine_steps(v["default_steps"], dn), dn, (2010, 0), f"Refine {fw}x{fh} (denoise {dn:g})")
    fdec = b.add("WanMeterVAEDecode", {"tiled": "auto"}, (2400, 0), (300, 100))
    fcv = b.add("CreateVideo", {"fps": float(v["fps"])}, (2400, 140), (300, 80))
    fsv = b.add("SaveVideo", {"filename_prefix": "video/WanMeter_final", "format": "auto", "codec": "auto"},
                (2400, 260), (300, 360))
    est = b.add("WanMeterEstimator", ESTIMATOR, ESTIMATOR_POS, ESTIMATOR_SIZE)  # below the draft
    note = ("Draft then final (T2V-A14B)\n\n"
            f"1. The draft runs at {dw}x{dh} with the official settings ({v['default_steps']} steps): a fraction "
            "of the 720p cost. Judge it; change the seed or prompt until you like it.\n"
            f"2. The kept draft is upscaled to {fw}x{fh}, encoded, re-noised and refined for the last "
            f"{refine_steps(v['default_steps'], dn)} of {v['default_steps']} steps (denoise {dn:g}). That tail is "
            "below the MoE boundary, so only the low-noise expert runs.\n\n"
            "To judge first: select group 4 and mute it (Ctrl+M), queue; then un-mute and queue again. The seed is "
            "fixed, so ComfyUI reuses the cached draft and only the refinement runs. Higher denoise: more detail "
            "and more change from the draft.\n\n"
            "The WanMeter Estimator shows the draft (the first sampler). Models: "
            f"{sp['model']}, {sp['model_low']}, {TEXT_ENCODER}, {sp['vae']}.")
    note_id = b.add("Note", {"text": note}, (0, 620), (380, 420))

    b.link(loader, "model", draft, "model")
    b.link(loader, "model", final, "model")
    b.link(te, "text_encoder", enc, "text_encoder")
    for s in (draft, final):
        b.link(enc, "positive", s, "positive")
        b.link(enc, "negative", s, "negative")
    b.link(draft, "LATENT", ddec, "samples")
    b.link(vae, "vae", ddec, "vae")
    b.link(ddec, "IMAGE", dcv, "images")
    b.link(dcv, "VIDEO", dsv, "video")
    b.link(ddec, "IMAGE", scale, "image")
    b.link(scale, "IMAGE", venc, "pixels")
    b.link(vae, "vae", venc, "vae")
    b.link(venc, "LATENT", final, "latent")
    b.link(final, "LATENT", fdec, "samples")
    b.link(vae, "vae", fdec, "vae")
    b.link(fdec, "IMAGE", fcv, "images")
    b.link(fcv, "VIDEO", fsv, "video")

    b.group("1. Load models", [loader, te, vae, note_id], "#3f789e")
    b.group("2. Prompt", [enc], "#a1309b")
    b.group(f"3. Draft {dw}x{dh}: judge it", [draft, ddec, dcv, dsv], "#b06634")
    b.group(f"4. Final {fw}x{fh}: refine the kept draft", [scale, venc, final, fdec, fcv, fsv], "#b58b2a")
    b.group("Estimate: VRAM / time / cost", [est], "#8A8")
    return b.workflow("draft_then_final")


def _card(kicker: str, title: str, title_size: int, accent: tuple[int, int, int]):
    """The 512x512 thumbnail canvas every workflow card shares: background, accent bar, two title lines.
    Returns (image, draw, (big, mid, small) fonts)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (512, 512), (24, 28, 38))
    d = ImageDraw.Draw(img)
    try:
        fonts = (ImageFont.truetype("DejaVuSans-Bold.ttf", title_size), ImageFont.truetype("DejaVuSans.ttf", 22),
                 ImageFont.truetype("DejaVuSans.ttf", 18))
    except OSError:
        fonts = (ImageFont.load_default(),) * 3
    d.rectangle((0, 0, 512, 8), fill=accent)
    d.text((28, 36), kicker, font=fonts[1], fill=(170, 180, 200))
    d.text((28, 66), title, font=fonts[0], fill=(240, 240, 245))
    return img, d, fonts


def draft_thumbnail(wf: dict[str, Any], dest: Path) -> None:
    """A 512x512 card: the draft/refine settings and the estimated time of draft + refine vs a direct 720p run."""

    (dw, dh), (fw, fh), dn = DRAFT["draft_size"], DRAFT["final_size"], DRAFT["denoise"]
    img, d, (big, mid, small) = _card("Wan2.2 T2V-A14B", "Draft then final", 36, (180, 140, 60))
    y = 136
    for line in (f"draft {dw}x{dh}, 40 steps", f"refine {fw}x{fh}, denoise {dn:g}", "(low-noise expert only)"):
        d.text((28, y), line, font=mid, fill=(210, 215, 225))
        y += 32
    y += 14
    d.text((28, y), "WanMeter estimate (whole video)", font=mid, fill=(90, 200, 130))
    y += 34
    lines = draft_estimate_lines()
    for line in lines:
        d.text((28, y), line, font=small, fill=(220, 225, 230))
        y += 28
    d.text((28, 470), "Judge a cheap draft, pay 720p only once", font=small, fill=(140, 150, 170))
    img.save(dest, "JPEG", quality=88, comment="\n".join(lines).encode("utf-8"))


def draft_estimate_lines() -> list[str]:
    """The draft card's lines: draft + refine against a direct 720p run (wanmeter.draft's cost model)."""
    from wanmeter.draft import draft_final_cost
    from wanmeter.estimator import Workload

    (fw, fh), out = DRAFT["final_size"], []
    for gpu in ("H100 SXM", "H200"):
        c = draft_final_cost(Workload("t2v_a14b", fw, fh, 81), DRAFT["draft_size"], refine_denoise=DRAFT["denoise"],
                             gpu=gpu)
        out.append(f"{gpu}: draft {c.draft_s / 60:.0f} min + refine {c.refine_s / 60:.0f} min")
        out.append(f"   vs direct 720p {c.full_s / 60:.0f} min ({100 * c.ratio:.0f}%)")
    return out


def thumbnail(key: str, wf: dict[str, Any], dest: Path) -> None:
    """A 512x512 card: variant, settings and the current estimate on CARD_GPUS (also in the JPEG comment)."""

    from wanmeter.variants import variant as facts

    v = facts(key)
    sampler = next(n for n in wf["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler"))
    wv = sampler["widgets_values"]
    img, d, (big, mid, small) = _card("Wan2.2", v["label"], 40, (90, 170, 120))
    if sampler["type"] == "WanMeterS2VSampler":
        lines = [f"{wv[0]}x{wv[1]}, 80-frame clips @ {v['fps']} fps", f"{wv[2]} steps, shift {wv[4]:g}, CFG {wv[3]:g}"]
    else:
        lines = [f"{wv[0]}x{wv[1]}, {wv[2]} frames @ {v['fps']} fps", f"{wv[3]} steps, shift {wv[6]:g}, "
                 + (f"CFG {wv[4]:g}/{wv[5]:g}" if v["experts"] == 2 else f"CFG {wv[4]:g}")]
    y = 140
    for line in lines:
        d.text((28, y), line, font=mid, fill=(210, 215, 225))
        y += 34
    y += 16
    d.text((28, y), "WanMeter estimate", font=mid, fill=(90, 200, 130))
    y += 34
    lines = estimate_lines(wf)
    for line in lines:
        d.text((28, y), line, font=small, fill=(220, 225, 230))
        y += 28
    d.text((28, 470), "VRAM, time and cost before you queue", font=small, fill=(140, 150, 170))
    img.save(dest, "JPEG", quality=88, comment="\n".join(lines).encode("utf-8"))


CARD_GPUS = ("H100 SXM", "RTX 4090")


def card_estimate(wf: dict[str, Any], gpu: str) -> dict[str, Any]:
    """The estimate a workflow card states, for one GPU: the estimate reply (the web extension's
    schema) for the workflow's widgets, as the estimator gives it now. The one call into the
    estimator for thumbnails; tests/test_workflows.py checks the cards against it."""
    from wanmeter.estimator.reply import estimate_graph

    return estimate_graph(wf, overrides={"gpu": gpu})


def fmt_seconds(s: float) -> str:
    """As the node shows times (fmtSeconds in web/estimate_logic.js)."""
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{round(s)} s"
    m = int(s // 60)
    if m < 60:
        return f"{m} min {round(s - m * 60)} s"
    return f"{m // 60} h {m % 60} min"


def estimate_lines(wf: dict[str, Any]) -> list[str]:
    """The card's estimate lines, one per GPU of CARD_GPUS, from card_estimate."""
    out = []
    for gpu in CARD_GPUS:
        body = card_estimate(wf, gpu)
        unit = "clip" if body["variant"] == "s2v_14b" else "video"
        fit = "" if body["fits"] else " (does not fit)"
        out.append(f"{gpu}: {fmt_seconds(body['seconds_per_video'])}, ${body['cost_per_video']:.2f}/{unit}, "
                   f"{body['peak_vram_gib']:.0f} GiB{fit}")
    return out


def card_text(path: Path) -> str:
    """The estimate lines a thumbnail states (kept in the JPEG's comment when it is written)."""
    from PIL import Image

    with Image.open(path) as im:
        c = im.info.get("comment", b"")
    return c.decode("utf-8") if isinstance(c, bytes) else str(c)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    pack = load_pack()
    OUT.mkdir(exist_ok=True)
    for key, sp in SPECS.items():
        wf = build(pack, key)
        path = OUT / f"{sp['file']}.json"
        path.write_text(json.dumps(wf, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        thumbnail(key, wf, path.with_suffix(".jpg"))
        print(f"wrote {path.relative_to(ROOT)} (+ .jpg)")
    wf = build_draft(pack)
    path = OUT / f"{DRAFT['file']}.json"
    path.write_text(json.dumps(wf, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    draft_thumbnail(wf, path.with_suffix(".jpg"))
    print(f"wrote {path.relative_to(ROOT)} (+ .jpg)")


if __name__ == "__main__":
    main()
