"""Typed errors and warnings. Each subclasses the builtin a caller would catch."""


class TimbralError(Exception):
    """Base class of every error Timbral raises on purpose."""


class ValidationError(TimbralError, ValueError):
    """An argument or an input has a wrong value, type or shape."""


class NotFittedError(TimbralError, ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class DataError(TimbralError, ValueError):
    """Input data could not be read, or nothing usable was left after cleaning."""


class ArtifactError(TimbralError, ValueError):
    """A saved model is missing, damaged, tampered with or from a newer format."""


class UnknownIdError(TimbralError, KeyError):
    """A user or item id is not known to the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ConvergenceWarning(UserWarning):
    """``fit`` stopped at ``max_iter`` before the loss settled within ``tol``."""


class RegistryError(TimbralError, ValueError):
    """The model registry refused an operation, or its database could not be used."""
