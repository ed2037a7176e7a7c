"""Name -> factory registries (timm's ``create_model`` pattern), importable without torch.

Configs name registered components; they never hold import paths.
"""

import inspect
from typing import Any, Callable, TypeVar

from vl_attention.config import ConfigError

_Factory = TypeVar('_Factory', bound=Callable[..., Any])


class Registry:
    """A family of factories selectable by name."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[_Factory], _Factory]:
        """Class or function decorator registering a factory under ``name``."""
        def decorator(factory: _Factory) -> _Factory:
            if name in self._factories:
                raise ValueError(f'{self.family} {name!r} is registered twice')
            self._factories[name] = factory
            return factory
        return decorator

    def names(self) -> list[str]:
        """Return the sorted names of everything registered."""
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered under ``name``; unknown names list the known ones."""
        try:
            return self._factories[name]
        except KeyError:
            raise ConfigError(
                f'unknown {self.family} {name!r}; known {self.family}s: {self.names()}') from None

    def create(self, name: str, **options: Any) -> Any:
        """Call the factory with keyword options, naming unknown options clearly."""
        factory = self.get(name)
        accepted = _keyword_names(factory)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(
                f'{self.family} {name!r} does not take option(s) {unknown}; '
                f'it takes {sorted(accepted)}')
        return factory(**options)


def _keyword_names(factory: Callable[..., Any]) -> set[str]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = inspect.signature(target).parameters.values()
    return {parameter.name for parameter in parameters
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
            and parameter.name != 'self'}
