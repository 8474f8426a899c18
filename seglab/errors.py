"""The one exception type for a user's mistake.

The command line prints a SeglabError as a single line (no traceback) and exits with status 2;
anything else is a bug in seglab and keeps its traceback.
"""


class SeglabError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong option, a mismatched checkpoint.

    The message names the file or option and says how to fix it.
    """


def first_line(error: BaseException, empty: str | None = None) -> str:
    """The first line of `error`'s message, for a one-line report of a failure seglab did not
    cause; `empty` (default: the exception's type name) when the message is blank."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (empty or type(error).__name__)
