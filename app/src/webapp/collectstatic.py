"""`webapp-collectstatic DEST`: copy the package's static files to DEST, where nginx serves them
under /static/. The bake runs it once; nothing at run time writes there."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path


def collect(destination: Path) -> list[Path]:
    """Copy every static file into `destination` (created if needed); returns the files written.
    Files are 0644 and directories 0755 so nginx's user can read them whoever owns them."""
    written: list[Path] = []
    _copy_tree(files("webapp") / "static", destination, written)
    return written


def _copy_tree(source: Traversable, destination: Path, written: list[Path]) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    destination.chmod(0o755)
    for entry in sorted(source.iterdir(), key=lambda item: item.name):
        target = destination / entry.name
        if entry.is_dir():
            _copy_tree(entry, target, written)
        else:
            target.write_bytes(entry.read_bytes())
            target.chmod(0o644)
            written.append(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="webapp-collectstatic", description="Copy the web app's static files to DEST."
    )
    parser.add_argument("destination", metavar="DEST", type=Path, help="directory nginx serves as /static/")
    args = parser.parse_args(argv)
    try:
        written = collect(args.destination)
    except OSError as error:
        print(f"webapp-collectstatic: cannot write to {args.destination}: {error}", file=sys.stderr)
        return 1
    print(f"copied {len(written)} static files to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
