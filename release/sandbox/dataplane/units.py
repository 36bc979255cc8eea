"""systemd unit files, read from an instance's root filesystem, and the order to start them in.

Pure: reads files, starts nothing. `boot_plan(root)` answers "what would systemd start at boot,
and in which order" for the subset of unit semantics the sandbox honours (docs/dataplane.md).
"""

from __future__ import annotations

import fnmatch
import heapq
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from release.sandbox.dataplane.rootfs import resolve_in_root

# Highest precedence first, as systemd searches them.
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DEFAULT_TARGET = "multi-user.target"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The sandbox waits less than systemd's 90 s defaults: an instance that hangs should fail fast.
MAX_START_TIMEOUT_S = 60.0
MAX_STOP_TIMEOUT_S = 10.0

# Units the sandbox never starts: there is no kernel of its own, no systemd, no terminals, no
# timers or socket activation. Everything else the image enables is started.
SKIPPED_UNIT_PATTERNS = (
    "systemd-*", "getty@*", "serial-getty@*", "console-getty.service", "container-getty@*",
    "autovt@*", "dbus*", "*.socket", "*.timer", "*.path", "*.mount", "*.automount", "*.swap",
    "*.device", "*.slice", "*.scope", "e2scrub*", "fstrim*", "apt-daily*", "dpkg-db-backup*",
    "man-db*", "logrotate*", "networking.service", "ifup@*", "keyboard-setup.service",
    "console-setup.service", "kmod*", "procps.service", "rsyslog.service", "cron.service",
    "ssh@*",
)  # fmt: skip

_LIST_KEYS = {
    "ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost", "Environment",
    "EnvironmentFile", "Requires", "Wants", "BindsTo", "After", "Before", "RuntimeDirectory",
    "SupplementaryGroups",
}  # fmt: skip
_CONDITIONS = (
    "ConditionPathExists", "ConditionPathIsDirectory", "ConditionFileNotEmpty",
    "ConditionFileIsExecutable", "ConditionDirectoryNotEmpty",
)  # fmt: skip


def parse_unit_text(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) assignments in file order. Handles comments and `\\` continuations."""
    assignments: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if sep:
            assignments.append((section, key.strip(), value.strip()))
    return assignments


@dataclass(frozen=True)
class Command:
    """One Exec*= line: its argv (before $VAR expansion) and its prefix flags."""

    argv: tuple[str, ...]
    ignore_failure: bool = False  # "-"
    argv0_separate: bool = False  # "@": argv[1] is argv[0] for the program
    no_env_expansion: bool = False  # ":"
    privileged: bool = False  # "+", "!", "!!": run as root (still confined to the instance)

    def expand(self, env: Mapping[str, str]) -> list[str]:
        """Environment substitution as systemd does it: `$VAR` alone as a word splits into words,
        `${VAR}` anywhere stays one word; `$$` is a literal `$`."""
        if self.no_env_expansion:
            return list(self.argv)
        out: list[str] = []
        for word in self.argv:
            if word.startswith("$") and word[1:].isidentifier():
                out.extend(env.get(word[1:], "").split())
                continue
            out.append(_substitute_braced(word, env))
        return out


def _substitute_braced(word: str, env: Mapping[str, str]) -> str:
    out, i = [], 0
    while i < len(word):
        if word.startswith("$$", i):
            out.append("$")
            i += 2
        elif word.startswith("${", i) and "}" in word[i:]:
            end = word.index("}", i)
            out.append(env.get(word[i + 2 : end], ""))
            i = end + 1
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def parse_command(value: str) -> Command | None:
    flags = {"ignore_failure": False, "argv0_separate": False, "no_env_expansion": False, "privileged": False}
    i = 0
    while i < len(value) and value[i] in "-@:+!":
        flags[{"-": "ignore_failure", "@": "argv0_separate", ":": "no_env_expansion"}.get(value[i], "privileged")] = (
            True
        )
        i += 1
    try:
        argv = tuple(shlex.split(value[i:], comments=False, posix=True))
    except ValueError:
        return None
    return Command(argv, **flags) if argv else None


def parse_environment(values: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        for word in words:
            key, sep, val = word.partition("=")
            if sep and key:
                env[key] = val
    return env


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines; # and ; comments; shell-style quotes in values; `export ` tolerated."""
    env: dict[str, str] = {}
    for line in text.replace("\\\n", "").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value]
        env[key.strip()] = " ".join(words)
    return env


def parse_seconds(value: str | None, default: float) -> float:
    """systemd time spans: "90", "5s", "1min 30s", "1min30s", "500ms", "infinity"."""
    if not value:
        return default
    if value.strip() == "infinity":
        return float("inf")
    units = {"": 1, "ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", value):
        return default
    if any(suffix not in units for _, suffix in parts):
        return default
    return sum(float(number) * units[suffix] for number, suffix in parts)


@dataclass
class Unit:
    name: str
    path: Path | None  # host path of the main unit file; None for a target the image lacks
    settings: dict[str, list[str]] = field(default_factory=dict)  # "Section.Key" -> values
    wants_dir_entries: list[str] = field(default_factory=list)
    requires_dir_entries: list[str] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.settings.get(key)
        return values[-1] if values else default

    def all(self, key: str) -> list[str]:
        return [word for value in self.settings.get(key, []) for word in value.split()]

    def commands(self, key: str) -> list[Command]:
        parsed = (parse_command(self.specifiers(v)) for v in self.settings.get(f"Service.{key}", []))
        return [c for c in parsed if c is not None]

    @property
    def is_target(self) -> bool:
        return self.name.endswith(".target")

    @property
    def type(self) -> str:
        default = "simple" if self.settings.get("Service.ExecStart") else "oneshot"
        return self.get("Service.Type", default) or default

    @property
    def wants(self) -> list[str]:
        return self.all("Unit.Wants") + self.wants_dir_entries

    @property
    def requires(self) -> list[str]:
        return self.all("Unit.Requires") + self.all("Unit.BindsTo") + self.requires_dir_entries

    def flag(self, key: str) -> bool:
        return (self.get(key, "no") or "no").lower() in ("yes", "true", "on", "1")

    def specifiers(self, value: str) -> str:
        """%n %N %p %i %I %t %S %C %L %E %% (the ones that need no runtime knowledge)."""
        prefix, _, rest = self.name.partition("@")
        instance = rest.rsplit(".", 1)[0] if rest else ""
        table = {
            "n": self.name, "N": self.name.rsplit(".", 1)[0], "p": prefix.rsplit(".", 1)[0],
            "i": instance, "I": instance, "t": "/run", "S": "/var/lib", "C": "/var/cache",
            "L": "/var/log", "E": "/etc", "%": "%",
        }  # fmt: skip
        out, i = [], 0
        while i < len(value):
            if value[i] == "%" and i + 1 < len(value) and value[i + 1] in table:
                out.append(table[value[i + 1]])
                i += 2
            else:
                out.append(value[i])
                i += 1
        return "".join(out)

    def unmet_condition(self, root: Path) -> str | None:
        """The first Condition*= that does not hold, as "Key=value"; None when all hold."""
        for key in _CONDITIONS:
            for value in self.settings.get(f"Unit.{key}", []):
                raw = value.lstrip("|")
                negate = raw.startswith("!")
                path = resolve_in_root(root, raw.lstrip("!"))
                holds = {
                    "ConditionPathExists": path.exists(),
                    "ConditionPathIsDirectory": path.is_dir(),
                    "ConditionFileNotEmpty": path.is_file() and path.stat().st_size > 0,
                    "ConditionFileIsExecutable": path.is_file() and bool(path.stat().st_mode & 0o111),
                    "ConditionDirectoryNotEmpty": path.is_dir() and any(path.iterdir()),
                }[key]
                if holds == negate:
                    return f"{key}={value}"
        return None


def is_skipped(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SKIPPED_UNIT_PATTERNS)


class UnitLoader:
    """Finds units and their drop-ins in an instance's unit directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dirs(self) -> list[Path]:
        return [resolve_in_root(self.root, d) for d in UNIT_DIRS]

    def _find(self, name: str) -> Path | None:
        for directory in self._dirs():
            entry = directory / name
            if entry.is_symlink() or entry.exists():
                # Follow aliases and enablement symlinks inside the instance, never on the host.
                resolved = resolve_in_root(self.root, f"{self._instance_path(directory)}/{name}")
                if resolved.is_file():
                    return resolved
        return None

    def _instance_path(self, host_dir: Path) -> str:
        return "/" + str(host_dir.relative_to(self.root))

    def is_masked(self, name: str) -> bool:
        for directory in self._dirs():
            link = directory / name
            if link.is_symlink() and PurePosixPath(str(link.readlink())) == PurePosixPath("/dev/null"):
                return True
            if link.exists() or link.is_symlink():
                return False
        return False

    def dependency_dir(self, name: str, suffix: str) -> list[str]:
        entries: set[str] = set()
        for directory in self._dirs():
            deps = directory / f"{name}.{suffix}"
            if deps.is_dir():
                entries.update(p.name for p in deps.iterdir())
        return sorted(entries)

    def load(self, name: str) -> Unit | None:
        """The unit with its drop-ins applied; None when the image has no such unit."""
        path = self._find(name)
        template_instance = None
        if path is None and "@" in name:
            prefix, _, rest = name.partition("@")
            template_instance = f"{prefix}@.{rest.rsplit('.', 1)[-1]}"
            path = self._find(template_instance)
        if path is None or not path.is_file():
            return None
        unit = Unit(name, path)
        texts = [path.read_text(errors="replace")]
        dropins: dict[str, Path] = {}
        for directory in reversed(self._dirs()):  # higher precedence overrides same-named drop-ins
            # "service.d/" applies to every service (systemd 246 and later), then the unit's own.
            kind = name.rsplit(".", 1)[-1]
            for base in filter(None, (kind, template_instance, name)):
                d = directory / f"{base}.d"
                if d.is_dir():
                    dropins.update({p.name: p for p in d.glob("*.conf")})
        texts += [dropins[n].read_text(errors="replace") for n in sorted(dropins)]
        for text in texts:
            for section, key, value in parse_unit_text(text):
                full = f"{section}.{key}"
                if key in _LIST_KEYS or key.startswith("Condition"):
                    if value == "":
                        unit.settings[full] = []  # an empty assignment resets the list
                    else:
                        unit.settings.setdefault(full, []).append(value)
                else:
                    unit.settings[full] = [value]
        unit.wants_dir_entries = self.dependency_dir(name, "wants")
        unit.requires_dir_entries = self.dependency_dir(name, "requires")
        return unit

    def default_target(self) -> str:
        link = resolve_in_root(self.root, "/etc/systemd/system")
        default = link / "default.target"
        if default.is_symlink():
            return PurePosixPath(str(default.readlink())).name
        return DEFAULT_TARGET


@dataclass
class BootPlan:
    order: list[str]  # start order (targets included)
    units: dict[str, Unit]
    missing: set[str]  # named as a dependency but absent from the image
    masked: set[str]
    skipped: set[str]
    notes: list[str]  # things worth a console line (ordering cycles)


def boot_plan(root: Path) -> BootPlan:
    loader = UnitLoader(root)
    goal = loader.default_target()
    units: dict[str, Unit] = {}
    missing: set[str] = set()
    masked: set[str] = set()
    skipped: set[str] = set()
    queue = [goal]
    while queue:
        name = queue.pop()
        if name in units or name in missing or name in masked or name in skipped:
            continue
        if is_skipped(name):
            skipped.add(name)
            continue
        if loader.is_masked(name):
            masked.add(name)
            continue
        unit = loader.load(name)
        if unit is None:
            if name.endswith(".target"):
                # The image lacks systemd's targets: they are milestones, with their .wants dirs.
                unit = Unit(name, None)
                unit.wants_dir_entries = loader.dependency_dir(name, "wants")
                unit.requires_dir_entries = loader.dependency_dir(name, "requires")
            else:
                missing.add(name)
                continue
        units[name] = unit
        queue.extend(unit.wants + unit.requires)
    order, notes = _order(units)
    return BootPlan(order, units, missing, masked, skipped, notes)


def _order(units: dict[str, Unit]) -> tuple[list[str], list[str]]:
    """Topological order over After=/Before= (Kahn, ties by name); a cycle is broken, with a note."""
    before: dict[str, set[str]] = {name: set() for name in units}  # name -> units that must start first
    for name, unit in units.items():
        for other in unit.all("Unit.After"):
            if other in units:
                before[name].add(other)
        for other in unit.all("Unit.Before"):
            if other in units:
                before[other].add(name)
    # Targets wait for what they pull in unless the unit orders itself after them (systemd's
    # default dependencies for targets), so "multi-user.target reached" means its wants started.
    for name, unit in units.items():
        if unit.is_target:
            for dep in unit.wants + unit.requires:
                if dep in units and name not in before[dep]:
                    before[name].add(dep)
    order: list[str] = []
    notes: list[str] = []
    remaining = {name: set(deps) for name, deps in before.items()}
    ready = [name for name, deps in remaining.items() if not deps]
    heapq.heapify(ready)
    while remaining:
        if not ready:
            victim = min(remaining)
            notes.append(f"ordering cycle involving {victim}: started without waiting for {sorted(remaining[victim])}")
            remaining[victim] = set()
            ready = [victim]
        name = heapq.heappop(ready)
        if name not in remaining:
            continue
        del remaining[name]
        order.append(name)
        for other, deps in remaining.items():
            if name in deps:
                deps.discard(name)
                if not deps:
                    heapq.heappush(ready, other)
    return order, notes
