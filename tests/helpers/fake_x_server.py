"""A stand-in X server for tests of the display check: it accepts a connection on a local TCP port and answers
the X11 connection set-up with a minimal success (one screen, no formats), which is all that opening a
display asks. It draws nothing; a client that sends requests afterwards gets no reply."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

X_TCP_PORT_BASE = 6000  # display N listens on TCP port 6000 + N


def setup_success_reply(byte_order: bytes) -> bytes:
    """The server's answer to a connection set-up: status 1 (success), protocol 11.0, one 1x1 screen."""
    endian = "<" if byte_order == b"l" else ">"
    fixed = struct.pack(f"{endian}IIIIHHBBBBBBBB4x", 0, 0x00200000, 0x001FFFFF, 0, 0, 65535, 1, 0, 0, 0, 32, 32, 8, 255)
    screen = struct.pack(f"{endian}IIIIIHHHHHHIBBBB", 0x25, 0x20, 0xFFFFFF, 0, 0, 1, 1, 1, 1, 1, 1, 0x21, 0, 0, 24, 0)
    extra = fixed + screen  # no vendor string, no formats, a screen without depths
    return struct.pack(f"{endian}BxHHH", 1, 11, 0, len(extra) // 4) + extra


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


def _answer(connection: socket.socket) -> None:
    with connection:
        try:
            request = _read_exactly(connection, 12)
            endian = "<" if request[:1] == b"l" else ">"
            name_length, data_length = struct.unpack(f"{endian}HH", request[6:10])
            _read_exactly(connection, -name_length % 4 + name_length + -data_length % 4 + data_length)
            connection.sendall(setup_success_reply(request[:1]))
            while connection.recv(4096):
                pass
        except OSError:
            pass


@contextlib.contextmanager
def fake_x_display() -> Iterator[str]:
    """A display name ("127.0.0.1:N") that a fake X server answers while the block runs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for number in range(100, 1000):
        try:
            listener.bind(("127.0.0.1", X_TCP_PORT_BASE + number))
            break
        except OSError:
            continue
    else:
        listener.close()
        raise RuntimeError("no free TCP port for a fake X display")
    listener.listen(4)
    listener.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(30)
            threading.Thread(target=_answer, args=(connection,), daemon=True).start()

    server = threading.Thread(target=serve, name="fake-x-server", daemon=True)
    server.start()
    try:
        yield f"127.0.0.1:{number}"
    finally:
        stopping.set()
        server.join(10)
        listener.close()
