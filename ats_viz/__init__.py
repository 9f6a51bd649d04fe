"""ats-viz: see and measure Adaptive Token Sampling in vision transformers.

The library computes and never imports Streamlit; the app's pages only ask and draw.
"""

from .errors import InputError
from .vit import ATSConfig, ATSResult, StageTrace, patch_vit, run_ats

__all__ = ["ATSConfig", "ATSResult", "InputError", "StageTrace", "patch_vit", "run_ats"]
