"""Download: good, resumed after a cut, corrupted, unreachable — from a server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from chest_tf.data import download
from chest_tf.data.info import get_info
from chest_tf.errors import DataError

INFO = get_info("chestmnist")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours Range; ``server.cut_after`` drops the connection after
    that many bytes of the first response; ``server.corrupt`` flips a byte."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = bytearray(self.server.payload)
        if self.server.corrupt:
            body[len(body) // 2] ^= 0xFF
        start = 0
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        if header and self.server.honour_range:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = bytes(body[start:])
        if self.server.cut_after is not None:
            self.wfile.write(chunk[: self.server.cut_after])
            self.server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)  # the cut: fewer bytes than Content-Length promised
            return
        self.wfile.write(chunk)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    httpd.corrupt = False
    httpd.cut_after = None
    httpd.honour_range = True
    httpd.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/chestmnist.npz"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_download_is_verified_and_stamped(server, tmp_path):
    path = download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(server.payload), progress=False)
    assert path == tmp_path / "chestmnist.npz"
    assert path.read_bytes() == server.payload
    assert not (tmp_path / "chestmnist.npz.part").exists()
    assert (tmp_path / "chestmnist.npz.verified").exists()
    # A verified file is never fetched again: with the server gone, fetch still succeeds.
    server.payload = b"changed"
    assert download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(path.read_bytes())) == path
    assert len(server.ranges) == 1


def test_cut_download_resumes_with_a_range_request(server, tmp_path):
    server.cut_after = 1_000_000
    with pytest.raises(DataError, match="run the same command again|could not download"):
        download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(server.payload), progress=False)
    part = tmp_path / "chestmnist.npz.part"
    assert part.exists() and 0 < part.stat().st_size < len(server.payload)
    assert not (tmp_path / "chestmnist.npz").exists()  # nothing half-written under the final name
    path = download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(server.payload), progress=False)
    assert path.read_bytes() == server.payload
    assert server.ranges[-1] == f"bytes={part.stat().st_size if part.exists() else 1_000_000}-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    (tmp_path / "chestmnist.npz.part").write_bytes(server.payload[:1000])
    path = download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(server.payload), progress=False)
    assert path.read_bytes() == server.payload


def test_corrupted_download_leaves_no_file(server, tmp_path):
    server.corrupt = True
    with pytest.raises(DataError, match="corrupted.*MD5"):
        download.fetch(INFO, 28, tmp_path, url=_url(server), md5=_md5(server.payload), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_gives_one_clear_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        download.fetch(INFO, 28, tmp_path, url="http://127.0.0.1:9/chestmnist.npz", progress=False, timeout=5)
    message = str(excinfo.value)
    assert "127.0.0.1:9" in message and str(tmp_path / "chestmnist.npz") in message and "phantom" in message
    assert "\n" not in message


def test_users_own_file_is_used_with_a_warning(tmp_path):
    own = tmp_path / "chestmnist.npz"
    own.write_bytes(b"my own subset")
    with pytest.warns(UserWarning, match="not the published MedMNIST file"):
        assert download.fetch(INFO, 28, tmp_path, url="http://127.0.0.1:9/x") == own
    assert own.read_bytes() == b"my own subset"


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(download.DATA_DIR_ENV, str(tmp_path))
    assert download.npz_path(INFO, 64) == Path(tmp_path) / "chestmnist_64.npz"
    assert download.npz_path(INFO, 64, "/elsewhere") == Path("/elsewhere/chestmnist_64.npz")


def test_catalogue_urls_and_checksums():
    assert INFO.url(224).endswith("/chestmnist_224.npz?download=1")
    assert INFO.md5[28] == "02c8a6516a18b556561a56cbdd36c4a8"
    assert INFO.split_sizes == {"train": 78468, "val": 11219, "test": 22433}
    with pytest.raises(ValueError, match="no 32 px version"):
        INFO.url(32)
    with pytest.raises(ValueError, match="known: .*chestmnist"):
        get_info("chestxray")
