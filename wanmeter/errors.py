"""User-facing errors.

Every error the engine raises for bad input is a WanMeterError whose message names what is
wrong *and* the fix, because inside ComfyUI the message is all the user sees.
"""


class WanMeterError(Exception):
    """An input problem the user can fix; the message says how."""
