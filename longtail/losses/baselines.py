"""Imports every baseline loss module so that they register (stub: filled in by the baselines work)."""
