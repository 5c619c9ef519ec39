"""Errors that are the user's to fix: the entry point prints them without a traceback."""


class PipelineError(ValueError):
    """A problem with the input, the config or the run directory, stated with what to do."""


#: errno -> what it means for a run, and what to do.
_STORAGE = {
    "ENOSPC": "the disk is full: free space there or point run_dir (or the path named) to a disk with room",
    "EDQUOT": "the disk quota is used up: free space there or point run_dir (or the path named) elsewhere",
    "EROFS": "the filesystem is read-only: point run_dir (or the path named) to a writable directory",
    "EACCES": "permission denied: give this user access to it, or point run_dir (or the key naming it) elsewhere",
    "EPERM": "operation not permitted: give this user access to it, or point run_dir (or the key naming it) elsewhere",
}


def storage_error(e: BaseException) -> str | None:
    """One line for an OSError that is the machine's, not the code's (full disk, read-only
    directory, no permission); None for any other error. A resumable stage loses nothing:
    rerun it once there is room."""
    import errno

    if not isinstance(e, OSError) or e.errno is None:
        return None
    name = errno.errorcode.get(e.errno, "")
    if name in ("ENOTDIR", "EEXIST") and e.filename:
        # A directory of the run (run_dir or one below it) is taken by a file.
        from pathlib import Path

        path = Path(e.filename)
        blocking = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocking is not None:
            return (f"{blocking} is a file, where the run needs a directory: point run_dir (or the key naming "
                    "that path) elsewhere, or move the file away")
    if name not in _STORAGE:
        return None
    where = e.filename or "the run directory"
    verb = "cannot write" if name in ("ENOSPC", "EDQUOT", "EROFS") else "cannot access"
    return f"{verb} {where}: {_STORAGE[name]}; then rerun the same command (finished work is kept)"
