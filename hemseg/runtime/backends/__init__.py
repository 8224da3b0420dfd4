"""Inference backends, Polygraphy-style: a loader makes an artifact (session, engine), a runner runs it.

Each engine is one small class implementing :class:`hemseg.runtime.backends.base.Runner`.
"""
