"""pv: identity-customised text-to-video (PersonalVideo). Import-light: no torch here."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("pv")
"""Decorator for plugin hook implementations: `from pvcli import hookimpl`."""
