"""Error types whose message is the whole story: one line naming the input and the rule.

The CLI prints ``str(error)`` and exits with code 2 for any :class:`MusicGenError`; anything else is a
bug and keeps its traceback.
"""


class MusicGenError(Exception):
    """Base class for every error the user can fix."""


class InvalidInputError(MusicGenError, ValueError):
    """A prompt, melody, option or output path breaks a documented rule."""


class ModelFolderError(MusicGenError):
    """A model folder is missing, incomplete, corrupt or from another format version."""


class ExportError(MusicGenError):
    """A checkpoint cannot be exported, or an exported graph disagrees with its torch module."""
