"""stub"""
from ..registry import Registry
BACKBONES = Registry("backbone")
HEADS = Registry("head")
LongTailModel = ModelOutput = build_model = None
