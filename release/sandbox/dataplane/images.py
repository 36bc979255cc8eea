"""The image table: image id -> ordered read-only layers (base first). Persisted as JSON.

Layers the data plane made (from CreateImage) live under `state_dir/layers/` and are deleted when
no image and no instance uses them any more. A directory given to RegisterImage (such as the
cached base image) is referenced in place and never deleted by the data plane.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from release.errors import SandboxError


class ImageTable:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "images.json"
        self.layers_dir = state_dir / "layers"
        self._lock = threading.RLock()
        self._images: dict[str, list[Path]] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self._images = {image: [Path(p) for p in layers] for image, layers in data["images"].items()}

    def _save(self) -> None:
        data = {"images": {image: [str(p) for p in layers] for image, layers in self._images.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def layers(self, image_id: str) -> list[Path]:
        with self._lock:
            if image_id not in self._images:
                raise SandboxError(
                    f"image {image_id} has no root filesystem in the sandbox",
                    hint="Register it with the sandbox (RegisterImage of a rootfs) or bake it",
                )
            return list(self._images[image_id])

    def images(self) -> dict[str, list[Path]]:
        with self._lock:
            return {image: list(layers) for image, layers in self._images.items()}

    def add(self, image_id: str, layers: list[Path]) -> None:
        for layer in layers:
            if not layer.is_dir():
                raise SandboxError(f"image {image_id}: layer {layer} is not a directory")
            if ":" in str(layer) or "," in str(layer):
                raise SandboxError(f"image {image_id}: overlayfs cannot use a layer path with ':' or ',': {layer}")
        with self._lock:
            if image_id in self._images and self._images[image_id] != layers:
                raise SandboxError(f"image {image_id} already exists with other layers")
            self._images[image_id] = list(layers)
            self._save()

    def remove(self, image_id: str) -> None:
        with self._lock:
            if self._images.pop(image_id, None) is not None:
                self._save()

    def owned(self, layer: Path) -> bool:
        return layer.parent == self.layers_dir

    def referenced(self) -> set[Path]:
        with self._lock:
            return {layer for layers in self._images.values() for layer in layers}
