"""Where the project's own files live: the bundled resources and models beside the package."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESOURCES_DIR = PROJECT_ROOT / "resources"
BUNDLED_MODELS_DIR = PROJECT_ROOT / "models"
SAMPLE_PICTURE = RESOURCES_DIR / "sample.png"
