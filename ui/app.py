"""Entry script for `streamlit run`: reads the store, an optional model copy and base map from the environment."""
import os
import sys
from pathlib import Path

# `streamlit run ui/app.py` puts ui/ itself on sys.path; the packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ui.page import render  # noqa: E402

render(os.environ.get("LOOKALIKE_STORE"), model=os.environ.get("LOOKALIKE_MODEL") or None,
       basemap=os.environ.get("LOOKALIKE_BASEMAP") or None,
       max_upload_mb=int(os.environ.get("LOOKALIKE_MAX_UPLOAD_MB") or 50))
