"""Receive one uploaded file: the multipart body is streamed to disk under a size limit, never held in memory.

The client's file name is only shown (cleaned of folders and control characters); the file is stored as
`upload<ext>` in the job's folder, the extension taken from the name only when it is a known image/video one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from recce.data.indexers.base import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
FIELD = "file"
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries a browser adds around the file


class UploadError(Exception):
    """An upload refused with an HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    path: Path  # where the bytes are, named by us
    name: str  # the client's file name, for display only
    size: int


def display_name(raw: str) -> str:
    """The last component of a client file name, without control characters, at most 200 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name[:200] or "upload"


def _extension(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in EXTENSIONS:
        shown = suffix or "none"
        raise UploadError(415, f"{name}: not an image or video (extension {shown}); accepted: {', '.join(EXTENSIONS)}")
    return suffix


class _Receiver:
    """python-multipart callbacks that write the one file part to `folder/upload<ext>`."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.file: BinaryIO | None = None
        self.upload: Upload | None = None
        self.writing = False

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition"))
        if options.get(b"name") != FIELD.encode() or b"filename" not in options:
            return  # other form fields are ignored
        if self.upload is not None:
            raise UploadError(400, "one file per job: send each file in its own request")
        name = display_name(options[b"filename"].decode("utf-8", errors="replace"))
        path = self.folder / f"upload{_extension(name)}"
        self.file = path.open("wb")
        self.upload = Upload(path, name, 0)
        self.writing = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.writing:
            return
        self.upload.size += end - start
        if self.upload.size > self.limit:
            raise UploadError(413, f"{self.upload.name}: larger than the {self.limit // 2**20} MB upload limit")
        self.file.write(data[start:end])

    def on_part_end(self) -> None:
        if self.writing:
            self.file.close()
            self.writing = False

    def callbacks(self) -> dict:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished", "part_data")
        return {f"on_{name}": getattr(self, f"on_{name}") for name in (*names, "part_end")}


async def receive(chunks: AsyncIterator[bytes], headers: dict[str, str], folder: Path, limit: int) -> Upload:
    """Stream a multipart body with one `file` field into `folder`; UploadError when it cannot be accepted."""
    content_type, options = parse_options_header(headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(400, f"send the file as multipart/form-data in a field named '{FIELD}'")
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        raise UploadError(413, f"upload of {int(length) / 2**20:.0f} MB is over the {limit // 2**20} MB limit")
    receiver = _Receiver(folder, limit)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # python-multipart's parse errors and a client that went away
        raise UploadError(400, f"the upload could not be read ({error})") from None
    finally:
        if receiver.file is not None:
            receiver.file.close()
    if receiver.upload is None:
        raise UploadError(400, f"no file in the upload (a multipart field named '{FIELD}' with a file name)")
    if receiver.writing:
        raise UploadError(400, f"{receiver.upload.name}: the upload ended before the file did")
    return receiver.upload
