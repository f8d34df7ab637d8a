"""Our own exception types. Every error a user can cause names what to fix."""

from __future__ import annotations


class GossiplearnError(Exception):
    """Base class of every error raised on purpose by gossiplearn."""


class ConfigError(GossiplearnError, ValueError):
    """A configuration value, flag or spec string is invalid (CLI exit code 2)."""


class TopologyError(ConfigError):
    """A topology spec is malformed, or the graph it gives is unusable (e.g. disconnected)."""


class DatasetError(ConfigError):
    """A dataset is unknown, missing from disk, or its files are corrupt."""


class ModelError(ConfigError):
    """A model name is unknown or does not fit the dataset's input shape."""


class CheckpointError(GossiplearnError):
    """A checkpoint cannot be written, or the one on disk holds values out of range."""


class WireError(GossiplearnError):
    """A message received from the network is rejected. Never fatal for a peer."""


class MalformedMessage(WireError):
    """The bytes are not a well-formed gossiplearn message."""


class MessageTooLarge(WireError):
    """The message exceeds the configured size limit."""


class ModelMismatch(WireError):
    """The model in a message does not have the local model's tensors, dtypes or shapes."""


class NonFiniteModel(WireError):
    """The model in a message holds NaN or Inf values."""


class ModelOutOfRange(WireError):
    """The model in a message holds values far beyond anything the receiver's own model
    holds: no honest peer of the same run sends such a model."""
