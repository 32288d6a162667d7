"""The one exception type for bad input.

Anything a user can get wrong (an unknown name, a bad grid, a missing data
file, an unreachable cluster) raises UserError with a single line that names
the problem and the fix. The CLI prints it as `error: ...` and exits with 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    pass
