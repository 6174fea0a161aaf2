"""Errors a researcher can act on: each names the setting, file or model at fault."""


class CircuitflowError(Exception):
    """Base class; the command line prints these without a traceback."""


class ConfigError(CircuitflowError):
    """A configuration value is missing or invalid."""


class ModelLoadError(CircuitflowError):
    """A model or tokenizer could not be loaded."""


class TableError(CircuitflowError):
    """A Parquet input is missing, unreadable or lacks a column."""


class JsonFileError(CircuitflowError):
    """A JSON input is missing or not valid JSON."""


class OutputError(CircuitflowError):
    """An output could not be written (no space left, no permission)."""


class UsageError(CircuitflowError):
    """The command line names an unknown argument, lacks one, or has malformed --params."""


class OptionError(ConfigError):
    """A dataset option does not fit its task; the config names the dataset around it."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"dataset option '{option}': {problem}")
        self.option, self.problem = option, problem
