"""Folders that may live in shared storage: one place that tells a URI (s3://, gs://, file://)
from a local path, and copies folders and files between the two (pyarrow's filesystems).

A sweep on a cluster keeps its trials and exports its best model under a URI; the server and
the trainers read a model folder from one (``--model s3://.../best``).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def is_uri(location: str | Path) -> bool:
    """A storage URI (``s3://bucket/x``), not a local path."""
    return "://" in str(location)


def filesystem(location: str | Path):
    """(pyarrow filesystem, path within it) of a URI or a local path."""
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(str(location))
    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def is_folder(location: str | Path) -> bool:
    """Whether a folder is at ``location`` (OSError if its storage cannot be reached)."""
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def replace_folder(source: str | Path, destination: str | Path) -> None:
    """Make ``destination`` a copy of the folder ``source``, removing what was there first;
    either may be a URI."""
    if not is_uri(source) and not is_uri(destination):
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree(source, destination)
        return
    fs, path = filesystem(destination)
    if is_uri(destination):
        fs.delete_dir_contents(path, missing_dir_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
    copy(source, destination)


def copy(source: str | Path, destination: str | Path) -> None:
    """Copy the file or folder ``source`` to ``destination`` (either may be a URI)."""
    import pyarrow.fs

    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    pyarrow.fs.copy_files(
        source_path,
        destination_path,
        source_filesystem=source_fs,
        destination_filesystem=destination_fs,
    )
