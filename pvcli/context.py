"""What every job runs with: the identity store, the plugin registry (loaded on first use),
a reporter for progress and warnings, and the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .reporting import Reporter
from .store import Store

if TYPE_CHECKING:
    from .plugins import Registry


@dataclass
class Context:
    store: Store = field(default_factory=Store)
    reporter: Reporter = field(default_factory=Reporter)
    device: str | None = None
    registry_factory: Callable[[], Registry] | None = None
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        """Plugins load once, and only when a job needs one."""
        if self._registry is None:
            if self.registry_factory is not None:
                self._registry = self.registry_factory()
            else:
                from .plugins import build_plugin_manager

                self._registry = build_plugin_manager(warn=self.reporter.warn)
        return self._registry
