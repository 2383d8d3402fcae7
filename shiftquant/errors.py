"""Errors raised on purpose by shiftquant. Every one derives from :class:`ShiftQuantError`."""


class ShiftQuantError(Exception):
    """Base class of every error shiftquant raises on purpose."""


class ConfigError(ShiftQuantError, ValueError):
    """A recipe, config or argument has a value outside what is allowed.

    The message names the field, the bad value and the allowed values.
    """

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is invalid: allowed {allowed}")


class UnknownKeyError(ConfigError):
    """A config override names a key that does not exist; the message suggests the closest ones."""

    def __init__(self, field: str, hint: str):
        self.field, self.value, self.allowed = field, None, hint
        ShiftQuantError.__init__(self, f"{field} is not a config key: {hint}")


class RangeError(ShiftQuantError, ValueError):
    """A value outside what an integer kernel computes (a shiftmax's logit step, a LayerNorm row)."""


class MalformedJSONError(ShiftQuantError, ValueError):
    """JSON in a file a user did not make is not what it must be: a key twice in one object, or a
    safetensors header that does not fit its file (its readers name the file and raise their own)."""


class CheckpointError(ShiftQuantError):
    """A checkpoint or weight file is unreadable or of the wrong kind."""


class BundleError(ShiftQuantError):
    """An exported bundle is corrupt, truncated, of another version or was tampered with."""


class ExportError(ShiftQuantError):
    """A model cannot be exported with the guarantees the exporter gives."""


class ExportRefused(ExportError):
    """The exporter refuses some nodes of a model; ``refusals`` lists every one of them
    (:class:`shiftquant.export.trace.check.Refusal`: module, type, source op, reason, a way around)."""

    def __init__(self, message: str, refusals: list):
        self.refusals = list(refusals)
        super().__init__(message)


class DataError(ShiftQuantError):
    """A dataset is missing, unreadable or inconsistent."""


class CodegenError(ShiftQuantError):
    """A bundle cannot become C: a node the C backend does not implement (named, with what to do),
    or the compiler failed."""


class CompilerNotFoundError(CodegenError):
    """No C compiler: the C backend cannot build its library (``backend="reference"`` needs none)."""


def shown(text: str, most: int = 80) -> str:
    """``text`` (a name read from a file: any length) as an error message shows it: cut to ``most``
    characters."""
    return text if len(text) <= most else text[:most] + "..."
