"""The model presets with what is installed on this machine (``segearth-backend models``, ``GET /models``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .presets import DEFAULT_PRESET, MODEL_PRESETS, SIMFEATUP, ModelPreset
from .resolve import preset_weights_path
from .simfeatup_weights import SIMFEATUP_URL, simfeatup_cache_path
from .weights_check import tag_download_url, tag_is_cached


def preset_status(preset: ModelPreset, cache_dir: Path) -> dict[str, Any]:
    """One preset as a JSON-ready dict: what it is, whether its weights are here, where they go."""
    path = preset_weights_path(preset, cache_dir)
    if path is None:
        tag = str(preset.pretrained_tag)
        installed = tag_is_cached(preset.architecture, tag, cache_dir)
        weights = tag
        where = (f"open_clip downloads it into {cache_dir / 'open_clip'} on first use; offline, download it "
                 f"elsewhere and pass the file with --model {preset.name} --clip-weights FILE")
        url = tag_download_url(preset.architecture, tag)
    else:
        installed = path.is_file()
        weights, where, url = str(path), str(path), str(preset.weights_url)
    row: dict[str, Any] = {
        "name": preset.name, "family": preset.family, "vit": preset.vit, "architecture": preset.architecture,
        "weights_file": preset.weights_file, "default": preset.name == DEFAULT_PRESET, "weights": weights,
        "installed": installed, "where": where,
        "url": url, "sha256": preset.weights_sha256, "note": preset.download_note,
        "feature_dim": preset.feature_dim, "patch_size": preset.patch_size,
        "upsampler": preset.upsampler, "upsampler_reason": preset.upsampler_reason,
        "download_size": preset.download_size, "attention": preset.attention,
        "last_blocks": preset.last_blocks, "imagery": preset.imagery,
    }
    ready = installed
    if preset.upsampler == SIMFEATUP:
        target = simfeatup_cache_path(cache_dir)
        row["simfeatup"] = {"installed": target.is_file(), "where": str(target), "url": SIMFEATUP_URL}
        ready = ready and target.is_file()
    row["ready"] = ready
    return row


def model_status(cache_dir: Path) -> list[dict[str, Any]]:
    """Every preset's :func:`preset_status`, default first."""
    return [preset_status(preset, cache_dir) for preset in MODEL_PRESETS]


def format_models(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`model_status` rows, then where to put what is missing."""
    header = ("preset", "family", "ViT", "imagery", "weights", "upsampler", "status")
    table = [header] + [
        (row["name"] + (" *" if row["default"] else ""), row["family"], row["vit"], row["imagery"],
         row["weights_file"] or row["weights"],
         "SimFeatUp" if row["upsampler"] == SIMFEATUP else "bilinear",
         "installed" if row["ready"] else "missing")
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    lines.append("(* the default; choose one with --model NAME or SEGEARTH_MODEL=NAME)")
    missing = [row for row in rows if not row["ready"]]
    if missing:
        lines.append("")
        lines.append("Missing weights (download on a machine with internet):")
        for row in missing:
            if not row["installed"]:
                note = f" ({row['note']})" if row["note"] else ""
                size = f"\n      size: {row['download_size']}" if row.get("download_size") else ""
                lines.append(f"  - {row['name']}: {row['url']}{note}{size}\n      put it: {row['where']}")
            simfeatup = row.get("simfeatup")
            if simfeatup and not simfeatup["installed"]:
                lines.append(f"  - {row['name']} SimFeatUp: {simfeatup['url']}\n      put it: {simfeatup['where']}")
    return "\n".join(lines)
