"""The error a training run that diverged stops with."""


class TrainingDiverged(RuntimeError):
    """The loss, a gradient norm or the weights became NaN or infinite; the message says where, and which
    checkpoint still holds the last good state."""
