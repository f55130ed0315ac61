"""Errors the CLI reports as a message (no traceback): they name the file, folder or key."""


class UserInputError(ValueError):
  """Bad data folder, workdir or weights file: the message says which and what was expected."""
