"""Headless Chromium for the report tests: a screenshot of a page, and a check that it shows the plots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
# the report's first series colour (#1f77b4): bars and curves drawn by the inline SVG plots
PLOT_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255


def chromium_or_skip() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is absent: `make test` installs it (apt-get install chromium); without it the "
                    "report is not rendered in a browser")  # fmt: skip
    return CHROMIUM


def screenshot(url: str, png: Path, profile: Path, size: tuple[int, int] = (1200, 2000)) -> np.ndarray:
    """Render `url` (file:// or http://) in headless Chromium; returns the screenshot as an RGB(A) float array."""
    if png.exists():
        png.unlink()
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-3000:]}"
    import matplotlib.image

    return matplotlib.image.imread(png)


def plot_pixels(image: np.ndarray) -> int:
    """How many pixels have the plots' blue: zero when the inline SVGs did not render."""
    rgb = image[..., :3]
    return int((np.abs(rgb - PLOT_BLUE).max(axis=-1) < 0.03).sum())


def keep_copy(png: Path, name: str) -> None:
    """With DIET_SCREENSHOTS=DIR set, a copy of the screenshot there, to look at after the run."""
    folder = os.environ.get("DIET_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(folder) / name)
