"""The one exception type that the command line prints as a single line."""


class LaryError(Exception):
  """A user-facing error: bad input, a missing file, a wrong flag.

  The command line prints `error: <message>` and exits non-zero, without a
  traceback, so the message must name the file, row or key and say what was
  expected.
  """
