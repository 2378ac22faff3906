"""The error every checkpoint problem is reported with."""


class CheckpointError(Exception):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""
