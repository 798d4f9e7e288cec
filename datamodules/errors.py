"""The data modules' one error type."""


class DataError(ValueError):
    """The data on disk cannot be used as configured."""
