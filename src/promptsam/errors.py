"""Exceptions whose message is one line a user can act on."""

from __future__ import annotations


class PromptSAMError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class CheckpointError(PromptSAMError):
    """A checkpoint file is unreadable or does not fit the model it is loaded into."""


class InputError(PromptSAMError):
    """An input image, volume or label file is unreadable or invalid."""
