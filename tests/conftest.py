"""Shared fixtures: the embedded model (loaded once), sample images, and a clean torch hub folder."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


@pytest.fixture(scope="session")
def lite0():
    """The embedded EfficientNet-Lite0 with its packaged ImageNet weights."""
    from explain import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torch's hub cache at an empty folder so no test depends on (or writes to) the user's cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
