"""User-facing errors: bad configuration or input, reported as one line before any work starts."""


class ConfigError(ValueError):
    """A bad configuration value, a missing dataset or an unusable checkpoint.

    The entry points print the message on one line and exit with status 2, without a traceback, so the
    message must name the offending key or path and say how to fix it.
    """


class RunError(RuntimeError):
    """A run that could not be completed for a reason outside its configuration: a full disk, no memory left,
    a preemption. The entry points print ``<prefix>: <message>`` on one line, without a traceback, and exit
    with ``exit_code`` (non-zero: the job was not completed). The message names the file or resource, the
    cause in words, and what to do.
    """

    exit_code = 1
    prefix = "error"


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def is_number(value: object) -> bool:
    """An int or float, not a bool (YAML's ``true`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = None, *, allow_none: bool = False) -> None:
    """Check that ``value`` is an integer (>= ``minimum``; or None with ``allow_none``), naming ``name``."""
    if allow_none and value is None:
        return
    ok = is_int(value) and (minimum is None or value >= minimum)  # type: ignore[operator]
    bound = "" if minimum is None else f" >= {minimum}"
    check(ok, f"{name} must be {'null or ' if allow_none else ''}an integer{bound}, got {value!r}")


def check_positive(name: str, value: float) -> None:
    check(is_number(value) and value > 0, f"{name} must be > 0, got {value!r}")


def check_unit_interval(name: str, value: float, *, closed_right: bool = False) -> None:
    """Check 0 <= value < 1 (or <= 1 with ``closed_right``)."""
    ok = is_number(value) and 0 <= value and (value <= 1 if closed_right else value < 1)
    bracket = "]" if closed_right else ")"
    check(ok, f"{name} must be in [0, 1{bracket}, got {value!r}")
