"""pipeline.json, the table of contents of a pipeline directory, checked before any part loads.

    {"format_version": 1, "classes": {part: class name}, "versions": {package: the version that saved it},
     "defaults": PipelineDefaults' fields, "files": {relative path: SHA-256 of every other file},
     "checksum": SHA-256 of the rest of pipeline.json}

A newer format_version is an error naming both versions; packages newer than the installed ones are a warning
naming them (the format version, not the package versions, says whether this code can read the directory); a value
of the wrong type is an error naming the field; bytes changed after saving (damage, or an edit by hand) are an
error naming the file. A pipeline saved before these fields existed has none of them: it loads as format 1,
without checksums.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from packaging.version import InvalidVersion, Version
from wd_tokenizer.io import atomic_write_text, check_digests, directory_digests, read_json

from wd_cli.info import PACKAGES, package_version
from wd_cli.text_encoders import json_text

PIPELINE_FILE = "pipeline.json"
FORMAT_VERSION = 1
KEYS = ("format_version", "classes", "versions", "defaults", "files", "checksum")
T = TypeVar("T")


def write_pipeline_file(directory: Path, classes: dict[str, str], defaults: dict[str, Any]) -> None:
    """Write `directory/pipeline.json` for the parts already saved in `directory`."""
    config = {"format_version": FORMAT_VERSION, "classes": classes,
              "versions": {package: package_version(package) for package in PACKAGES}, "defaults": defaults,
              "files": directory_digests(directory, exclude=(PIPELINE_FILE,))}
    atomic_write_text(directory / PIPELINE_FILE, json_text({**config, "checksum": _checksum(config)}))


def read_pipeline_file(directory: Path, parse_defaults: Callable[[dict], T]) -> tuple[dict[str, str], T]:
    """-> (classes, parse_defaults(defaults)) of `directory/pipeline.json` after every check in the module
    docstring, the files' checksums included; one-line ValueErrors naming the file (and the field)."""
    path = directory / PIPELINE_FILE
    config = read_json(path)
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    version = config.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer than format {FORMAT_VERSION}, which this "
                         f"wd-cli {package_version('wd-cli')} reads; upgrade wd-cli to load it")
    tables = {key: _string_table(config.get(key, {}), key, path) for key in ("classes", "versions", "files")}
    if not isinstance(config.get("defaults", {}), dict):
        raise ValueError(f"{path}: defaults must be a table, got {config['defaults']!r}")
    try:
        defaults = parse_defaults(config.get("defaults", {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad defaults: {error}") from None
    _warn_newer(tables["versions"], path)
    if "checksum" in config and config["checksum"] != _checksum({k: v for k, v in config.items() if k != "checksum"}):
        raise ValueError(f"{path} is damaged or was edited after saving: its checksum does not match its contents "
                         "(save the pipeline again with save_pretrained to keep an edit)")
    if "files" in config:
        check_digests(directory, tables["files"], path)
    return tables["classes"], defaults


def _checksum(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _string_table(value: Any, key: str, path: Path) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise ValueError(f"{path}: {key} must be a table of names to strings, got {value!r}")
    return value


def _warn_newer(versions: dict[str, str], path: Path) -> None:
    """Warn about each package that saved the pipeline at a newer version than the installed one."""
    for package, saved in versions.items():
        try:
            newer = Version(saved) > Version(package_version(package))
        except InvalidVersion:  # "not installed", or a damaged string (the checksum catches that)
            continue
        if newer:
            warnings.warn(f"{path} was saved with {package} {saved}, newer than the installed "
                          f"{package_version(package)}; if it does not load, upgrade {package}", stacklevel=3)
