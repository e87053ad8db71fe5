"""stub"""
from ..registry import Registry
SAMPLERS = Registry("sampler")
build_sampler = None
