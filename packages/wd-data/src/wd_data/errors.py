"""The one error type raised for media files that cannot be decoded."""


class MediaReadError(RuntimeError):
    """A video or image file is corrupt, truncated, empty, has no video stream, or ends before the clip."""
