"""The one exception type for a user's mistake.

The command line prints a SeglabError as a single line (no traceback) and exits with status 2;
anything else is a bug in seglab and keeps its traceback.
"""


class SeglabError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong option, a mismatched checkpoint.

    The message names the file or option and says how to fix it.
    """
