"""The prep report: what a prep run wrote, the realised noise, what it skipped; JSON beside the records."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atomic_files import write_json_atomic


class PrepError(ValueError):
    """Bad raw input or prep options; the message starts with the file (or flag) at fault.
    The one error type of the prep scripts (archives/prep_cli.py)."""


@dataclass
class PrepReport:
    dataset: str
    out_dir: str
    schema: str = "compact"
    seed: int = 42
    noise_levels: list = field(default_factory=list)
    records: dict = field(default_factory=dict)        # file key ("train", "10", ...) -> examples
    noise: dict = field(default_factory=dict)          # level -> noise_entry(...)
    skipped: list = field(default_factory=list)        # [{"item": path, "reason": text}]
    palette_misses: dict = field(default_factory=dict)
    time_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @staticmethod
    def noise_entry(pairs_total: int, pairs_picked: int, pairs_changed: int, images_total: int,
                    images_changed: int) -> dict:
        """Counts and realised shares for one noise level (shares are 0 when nothing to share)."""
        return {"pairs_total": pairs_total, "pairs_picked": pairs_picked,
                "pairs_changed": pairs_changed,
                "share_pairs_changed": pairs_changed / pairs_total if pairs_total else 0.0,
                "images_total": images_total, "images_changed": images_changed,
                "share_images_changed": images_changed / images_total if images_total else 0.0}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["noise"] = {str(k): v for k, v in self.noise.items()}
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temporary name, then rename)."""
        write_json_atomic(path, self.to_dict())
        return Path(path)

    def summary(self) -> str:
        lines = [f"{self.dataset} prep ({self.schema} schema, seed {self.seed}) -> {self.out_dir}",
                 "records: " + ", ".join(f"{_file_name(k)}={v}" for k, v in self.records.items())]
        for level, e in self.noise.items():
            lines.append(f"  noise {level:>2}%: pairs changed {e['pairs_changed']}/{e['pairs_total']}"
                         f" ({100 * e['share_pairs_changed']:.1f}%), images with changed multi-hot"
                         f" {e['images_changed']}/{e['images_total']}"
                         f" ({100 * e['share_images_changed']:.1f}%)")
        if self.palette_misses:
            lines.append(f"palette misses: {self.palette_misses.get('pixels', 0)} pixels in "
                         f"{self.palette_misses.get('maps', 0)} maps (set to -1)")
        lines.append(f"skipped: {len(self.skipped)}")
        lines += [f"  {s['item']}: {s['reason']}" for s in self.skipped]
        lines.append(f"time: {self.time_s:.1f} s")
        return "\n".join(lines)


def _file_name(key) -> str:
    """Record-count key -> the file stem it stands for ("train", or "train_noise_prcnt50" for 50)."""
    return f"train_noise_prcnt{key}" if str(key).isdigit() else str(key)
