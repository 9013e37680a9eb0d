"""What is in the lake right now: hour partitions, their data files, and pending compactions.

Readers use `effective_files` so a half-finished compaction never double counts (see docs/lake.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pyarrow.fs as pafs

from analytics_lake.errors import LakeError
from analytics_lake.location import Lake, is_data_file, parse_hour_dir

MANIFEST = "_compaction.json"


@dataclass(slots=True)
class HourPartition:
    dt: str
    hour: int
    path: str  # directory
    files: list[str] = field(default_factory=list)  # visible data file names, sorted
    manifest: dict | None = None  # {"output": name, "inputs": [names]} of an unfinished compaction

    @property
    def effective_files(self) -> list[str]:
        """Full paths readers should read: a finished merge output replaces the inputs it names."""
        names = self.files
        if self.manifest and self.manifest["output"] in names:
            replaced = set(self.manifest["inputs"])
            names = [n for n in names if n not in replaced]
        return [f"{self.path}/{n}" for n in names]


def read_manifest(lake: Lake, path: str) -> dict:
    try:
        with lake.fs.open_input_stream(path) as f:
            data = orjson.loads(f.read())
    except orjson.JSONDecodeError as e:
        raise LakeError(f"compaction manifest {path} is corrupt: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("output"), str) or not isinstance(data.get("inputs"), list):
        raise LakeError(f"compaction manifest {path} is malformed")
    return data


def list_hours(lake: Lake) -> list[HourPartition]:
    """One recursive listing of `usage/`; hours sorted by (dt, hour)."""
    selector = pafs.FileSelector(lake.usage_root, recursive=True, allow_not_found=True)
    hours: dict[str, HourPartition] = {}
    manifests: list[tuple[HourPartition, str]] = []
    prefix = lake.usage_root + "/"
    for info in lake.fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.startswith(prefix):
            continue
        relative_dir, _, name = info.path[len(prefix):].rpartition("/")
        parsed = parse_hour_dir(relative_dir)
        if parsed is None:
            continue
        part = hours.get(relative_dir)
        if part is None:
            part = hours[relative_dir] = HourPartition(parsed[0], parsed[1], prefix + relative_dir)
        if is_data_file(name):
            part.files.append(name)
        elif name == MANIFEST:
            manifests.append((part, info.path))
    for part, path in manifests:
        part.manifest = read_manifest(lake, path)
    out = sorted(hours.values(), key=lambda p: (p.dt, p.hour))
    for part in out:
        part.files.sort()
    return out


def effective_files(lake: Lake) -> list[str]:
    return [f for part in list_hours(lake) for f in part.effective_files]
