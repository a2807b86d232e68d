"""Errors a user can cause (bad input, bad files, bad configuration).

Library code raises these with a message that says what is wrong and what to do;
the CLI prints the message without a traceback, the nodes log it and keep the robot safe.
"""


class FastDPError(Exception):
    """A problem the user can fix: the message is meant to be read by a person."""


class ConfigError(FastDPError, ValueError):
    """An unknown name, an out-of-range value or an inconsistent set of options."""


class DatasetError(FastDPError):
    """A dataset that is missing, malformed or does not match what is asked of it."""


class ModelFileError(FastDPError):
    """A model directory or file that is missing, corrupted or of the wrong kind."""


class RendererError(FastDPError):
    """The offscreen renderer could not start."""
