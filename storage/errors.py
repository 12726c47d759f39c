"""Storage errors: everything a caller needs to tell apart, nothing driver-specific."""


class StorageError(Exception):
    """Base class of storage errors."""


class BadDatabaseUrl(StorageError, ValueError):
    """The database URL cannot be used: not a URL, a backend without its driver here, or a
    SQLite file that does not exist where one is only read."""


class StoreUnavailable(StorageError):
    """The database cannot be reached or refused the operation (network, locks, server down).

    Retrying later can help; the batched writer spools rows when it sees this.
    """


class RowsRejected(StorageError):
    """The database refused what was written: a value it cannot store (PostgreSQL refuses a NUL
    character in text), or a row whose run is gone (deleted meanwhile).

    Retrying the same rows cannot help; the batched writer sets them aside and goes on.
    """


class SchemaOutOfDate(StorageError):
    """The database schema is older (or newer) than this version of Tripwire expects."""


class RunNotFound(StorageError, LookupError):
    """No run matches the given name or id."""


class AmbiguousRun(RunNotFound):
    """A run name used in several projects, given without a project: naming one of them would
    be a guess (and ``runs delete`` or ``silence`` would act on another team's run)."""
