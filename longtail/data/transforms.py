"""stub"""
build_transforms = None
