"""Errors of the data layer: a sample that must be skipped, and a source that cannot feed a run."""


class BadSampleError(RuntimeError):
    """One sample cannot be used (undecodable media, unreadable caption, out-of-range ids): skip it and go on."""


class MediaReadError(BadSampleError):
    """A video or image file is corrupt, truncated, empty, has no video stream, or ends before the clip."""


class DataSourceError(RuntimeError):
    """A whole source cannot feed a run: it yields nothing, or skips more samples than the allowed rate."""
