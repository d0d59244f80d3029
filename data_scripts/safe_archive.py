"""Archive extraction that writes only inside the target folder, on every Python mmzoo supports.

Data set archives come from other people. A tar member named ``../../.bashrc`` or ``/etc/cron.d/x``, a
symbolic link pointing out of the folder (followed by a member written "into" it), a hard link to a
file outside, or a device node would otherwise land wherever it points. Python's ``filter="data"``
refuses these, but only exists from 3.12 (backported to 3.10.12 / 3.11.4); mmzoo supports 3.10.0 on.
So every member is checked here, on every version, before it is written:

* its name is relative and stays inside the folder once joined and resolved;
* no member is written through a symbolic link of the same archive (the classic two-member escape);
* a symbolic or hard link points inside the folder; devices, FIFOs and other special files are refused;
* files get no set-uid / set-gid bits and keep the owner of the extracting user (``set_attrs=False``).

Where ``filter="data"`` exists it is applied as well. Zip members are checked the same way (``zipfile``
never writes links, and names with ``..`` or a leading ``/`` are refused rather than silently renamed).
Standard library only, so the prepare scripts stay runnable without mmzoo's dependencies.
"""
from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

PathLike = Union[str, os.PathLike]
MAX_NAME = 1024  # longer member names are refused: resolving very long paths is where checks get fooled


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the target folder (or is a device / link out)."""


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _name_error(name: str) -> Optional[str]:
    """Why a member name is refused on its face (before looking at the disk), or None."""
    if not name or len(name) > MAX_NAME:
        return f"a name of {len(name)} characters"
    if "\x00" in name:
        return "a NUL byte in its name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or os.path.isabs(name):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    return None


def check_tar_member(member: tarfile.TarInfo, dest: str, links: set[str]) -> Optional[str]:
    """Why ``member`` may not be extracted into the resolved folder ``dest`` (None: it may).

    ``links`` holds the normalised names of the symbolic links already accepted from this archive.
    """
    why = _name_error(member.name)
    if why:
        return why
    name = posixpath.normpath(member.name.replace("\\", "/"))
    parts = name.split("/")
    for k in range(1, len(parts)):
        if "/".join(parts[:k]) in links:
            return f"a path through the symbolic link {'/'.join(parts[:k])!r} of the same archive"
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(target, dest):
        return f"a path resolving to {target}, outside {dest}"
    if member.issym() or member.islnk():
        link = member.linkname
        why = _name_error(link) if member.islnk() else ("an empty link target" if not link else None)
        if why:
            return f"a link with {why}"
        if os.path.isabs(link) or link.startswith(("/", "\\")):
            return f"a link to the absolute path {link!r}"
        base = os.path.dirname(os.path.join(dest, name)) if member.issym() else dest
        resolved = os.path.realpath(os.path.join(base, link))
        if not _inside(resolved, dest):
            return f"a link to {link!r}, which resolves outside {dest}"
    elif not (member.isfile() or member.isdir()):
        return "a device, FIFO or other special file"
    return None


def extract_tar(tar: tarfile.TarFile, dest: PathLike, members: Optional[Iterable[tarfile.TarInfo]] = None) -> None:
    """Extract ``members`` (default: all) of an open ``tar`` into ``dest``, refusing unsafe ones.

    Raises :class:`UnsafeArchiveError` naming the archive and member at the first unsafe member; members
    before it have been written (extract into a temporary folder and move it into place afterwards).
    """
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest_path)
    data_filter = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    links: set[str] = set()
    for m in (members if members is not None else tar):
        why = check_tar_member(m, root, links)
        if why:
            raise UnsafeArchiveError(f"{tar.name or 'archive'}: member {m.name!r} refused ({why}); the archive "
                                     f"is corrupt or was made to write outside {root}")
        if m.isfile():
            m.mode &= 0o755  # no set-uid / set-gid / sticky bits, no write access for others
        if m.issym():
            links.add(posixpath.normpath(m.name.replace("\\", "/")))
        tar.extract(m, root, set_attrs=False, **data_filter)


def check_zip_names(z: zipfile.ZipFile) -> None:
    """Raise :class:`UnsafeArchiveError` if a zip member name is absolute or climbs out with ``..``."""
    for name in z.namelist():
        why = _name_error(name)
        if why:
            raise UnsafeArchiveError(f"{z.filename or 'archive'}: member {name!r} refused ({why}); the archive "
                                     f"is corrupt or was made to write outside its target folder")


def extract_archive(archive: PathLike, dest: PathLike, keep: Optional[Callable[[str], bool]] = None) -> None:
    """Extract a ``.zip`` or ``.tar[.gz|.bz2|.xz]`` into ``dest``, only the members whose name ``keep``
    accepts (default: all), refusing unsafe members (:class:`UnsafeArchiveError`)."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            check_zip_names(z)
            names = [n for n in z.namelist() if keep is None or keep(n)]
            z.extractall(dest, members=names)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            extract_tar(tar, dest, (m for m in tar if keep is None or keep(m.name)))
    else:
        raise UnsafeArchiveError(f"{archive} is neither a zip nor a tar archive")
