"""Install Debian packages a test needs (SLURM, Chromium) when their commands are missing."""

from __future__ import annotations

import os
import shutil
import subprocess


class Unavailable(Exception):
    """The packages cannot be installed here: the caller skips, printing why."""


def ensure_installed(commands: tuple[str, ...], packages: tuple[str, ...], timeout: int = 300):
    if all(shutil.which(c) for c in commands):
        return
    what = ", ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{what} not installed, and installing needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    )
    for step in steps:
        try:
            result = subprocess.run(step, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"`{' '.join(step)}` took more than {timeout} s") from None
        if result.returncode != 0:
            raise Unavailable(f"`{' '.join(step)}` failed: {result.stderr.strip()[-1000:]}")
