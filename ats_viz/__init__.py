"""ats-viz: see and measure Adaptive Token Sampling in vision transformers.

The library computes and never imports Streamlit; the app's pages only ask and draw.
"""

from .errors import InputError
# Eager: models adds nothing to what vit already imports (torch, timm, safetensors).
from .models import LoadedModel, load_model
from .vit import ATSConfig, ATSResult, StageTrace, patch_vit, run_ats

__all__ = ["ATSConfig", "ATSResult", "InputError", "LoadedModel", "StageTrace", "load_model", "patch_vit",
           "run_ats"]
