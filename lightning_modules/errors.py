"""The modules' one error type for a configuration that cannot run."""


class ConfigError(ValueError):
    """A run that cannot start as configured (a non-positive lr, a cache missing for cached soft targets, ...)."""


def require_positive(**values: float) -> None:
    """One line naming the first knob that is not > 0."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{name} is {value}: it must be positive.")
