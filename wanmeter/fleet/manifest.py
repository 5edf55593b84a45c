"""The run manifest: which videos are finished, so a restarted `fleet run` redoes none of them.

out/fleet-manifest.jsonl, append-only, one JSON object a line, fsynced after each line:
    {"video": "fox-0003", "job": "fox", "digest": "...", "status": "done", "paths": [...], ...}
A video is done when a "done" line with its job's current digest exists (a job whose settings, prompt
or seed changed is redone). A torn last line (the driver killed mid-write) is skipped.
The workers' sidecars (<video>.json next to the outputs, written atomically after the videos) are
adopted on resume: a video finished after the driver died is recorded, not redone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NAME = "fleet-manifest.jsonl"


class Manifest:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / NAME
        self.entries: list[dict[str, Any]] = []
        self.torn = 0
        if self.path.exists():
            for raw in self.path.read_text(encoding="utf-8").splitlines():
                if not raw.strip():
                    continue
                try:
                    self.entries.append(json.loads(raw))
                except json.JSONDecodeError:
                    self.torn += 1

    def done(self) -> dict[str, dict[str, Any]]:
        """video id -> its done entry (the last one)."""
        return {e["video"]: e for e in self.entries if e.get("status") == "done" and "video" in e}

    def is_done(self, video: str, digest: str) -> bool:
        e = self.done().get(video)
        return e is not None and e.get("digest") == digest and all((self.dir / p).exists() for p in e.get("paths", []))

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")   # after a torn line
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def sidecar(self, video: str) -> dict[str, Any] | None:
        """A worker's record of a finished run (None if absent or unreadable)."""
        try:
            d = json.loads((self.dir / f"{video}.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if d.get("video") != video or not all((self.dir / p).exists() for p in d.get("paths", [])):
            return None
        return d
