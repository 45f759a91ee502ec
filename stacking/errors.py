"""The one exception type for bad user input: the CLI turns it into exit code 2."""


class UserError(Exception):
    """Bad input or usage; the message names the file, field or option at fault."""


class BundleError(UserError):
    """A bundle that is missing, incomplete, altered, unsigned or not trusted."""
