"""The one exception a person's mistake raises: its message says what to do next."""


class InputError(ValueError):
    """A bad upload, an impossible setting or a missing file.

    Pages show ``str(err)`` with ``st.error``; the command line prints it and exits 2.
    """
