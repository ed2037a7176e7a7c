"""The one base class of vl_attention's expected errors.

Every error the library raises on purpose (bad input, a damaged map, a
missing file, an unavailable backend) derives from :class:`VLAttentionError`,
so command-line tools and the node catch exactly these and print one line;
anything else is a bug and keeps its traceback.
"""


class VLAttentionError(Exception):
    """An expected failure whose message names the problem and the fix."""


def one_line(error: BaseException) -> str:
    """Return the message of ``error`` on one line (as the tools print it before exiting)."""
    return ' '.join(str(error).split())
