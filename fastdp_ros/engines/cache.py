"""The engine cache: built engines stored beside the model, reused while nothing they depend on changes.

Layout: <model>/engines/<backend>-<precision>-<digest>/ holding the engine file and
manifest.json. The digest hashes the key: model hash (config + weights), policy type, backend
settings (precision, device, provider...), the graph signature (sampler, steps, input shapes)
and the library versions. The manifest repeats the key and records the engine file's size and
sha256, the parity measured at build time and the eager reference output for the example
inputs; it is written last, so an interrupted build leaves no manifest and is rebuilt.

A read-only model directory (an installed package's share/) falls back to
$XDG_CACHE_HOME/fastdp_ros/engines/<model hash>/.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import fastdp_ros
from fastdp_ros.errors import ModelFileError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1


class CorruptEngine(Exception):
    """A cached engine that cannot be trusted; the message says why (internal, see policy.py)."""


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_root(model_dir: str | os.PathLike, model_hash: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a model's engines live: cache_dir, else <model>/engines, else the user cache."""
    if cache_dir is not None:
        root = Path(cache_dir)
        if not _writable_dir(root):
            raise ModelFileError(f"engine cache folder {root} cannot be created or written")
        return root
    root = Path(model_dir) / "engines"
    if _writable_dir(root):
        return root
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    fallback = base / "fastdp_ros" / "engines" / model_hash
    if not _writable_dir(fallback):
        raise ModelFileError(f"neither {root} nor {fallback} can be written: pass a writable cache_dir")
    log.info("%s is read-only; engines go to %s", root, fallback)
    return fallback


@dataclass
class CacheEntry:
    """One engine in the cache: its folder, key and engine file name."""

    dir: Path
    key: dict
    engine_file: str

    @classmethod
    def for_key(cls, root: Path, key: dict, engine_file: str) -> "CacheEntry":
        return cls(root / f"{key['backend']}-{key['precision']}-{key_digest(key)}", key, engine_file)

    @property
    def engine_path(self) -> Path:
        return self.dir / self.engine_file

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on this entry: a second process loading the same model waits
        for the first one's build and then reuses it instead of deleting its files mid-write."""
        with open(self.dir.parent / f".{self.dir.name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def exists(self) -> bool:
        """Whether a build was completed here (its manifest was written)."""
        return self.manifest_path.is_file()

    def verify(self) -> dict:
        """The manifest, after checking it and the engine file; CorruptEngine(reason) otherwise."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptEngine(f"its manifest {self.manifest_path} cannot be read ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("key") != self.key:
            raise CorruptEngine(f"its manifest {self.manifest_path} does not describe this engine")
        parity = manifest.get("parity")
        if (not isinstance(parity, dict) or not {"max_abs_diff", "tolerance"} <= set(parity)
                or not isinstance(manifest.get("reference_output"), list)):
            raise CorruptEngine(f"its manifest {self.manifest_path} lacks the parity record")
        if not self.engine_path.is_file():
            raise CorruptEngine(f"the engine file {self.engine_path} is missing")
        size = self.engine_path.stat().st_size
        if size != manifest.get("size"):
            raise CorruptEngine(f"{self.engine_path} has {size} bytes, {manifest.get('size')} were written")
        if file_sha256(self.engine_path) != manifest.get("sha256"):
            raise CorruptEngine(f"the sha256 of {self.engine_path} differs from the one recorded at build time")
        return manifest

    def temp_engine_path(self) -> Path:
        """Where a build writes before the atomic rename (same folder, same suffix)."""
        return self.dir / f".tmp-{os.getpid()}-{self.engine_file}"

    def prepare(self) -> None:
        """Empty the folder for a fresh build."""
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, temp_path: Path, parity: dict, reference, build_seconds: float) -> dict:
        """Move the built engine into place and write the manifest (last)."""
        os.replace(temp_path, self.engine_path)
        manifest = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "engine_file": self.engine_file,
            "size": self.engine_path.stat().st_size,
            "sha256": file_sha256(self.engine_path),
            "parity": parity,
            "reference_output": reference.tolist(),
            "build_seconds": round(build_seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fastdp_ros": fastdp_ros.__version__,
        }
        tmp = self.dir / f".tmp-{os.getpid()}-{MANIFEST}"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.manifest_path)
        return manifest
