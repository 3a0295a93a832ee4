"""RECCE face-forgery detection (Cao et al., CVPR 2022): model, data pipeline, protocols and detection."""

__version__ = "0.1.0"
