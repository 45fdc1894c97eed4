"""The viewer's JSON API and its security rules, over real HTTP against a running ``mammodetr serve``."""

from __future__ import annotations

import http.client
import json
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from ._server import start_server, stop_server

MAX_MB = 1


@pytest.fixture(scope="module")
def server(viewer_data, tmp_path_factory):
    s = start_server(viewer_data, tmp_path_factory.mktemp("http"), "--max-upload-mb", str(MAX_MB),
                     "--max-upload-files", "3", "--max-upload-pixels", "1000000", "--allow-host", "viewer.lan")
    yield s
    stop_server(s)
    # the private upload folder is gone once the server has stopped
    assert not list(s.tmpdir.glob("mammodetr-serve-*"))
    log = s.stderr()
    for secret in ("SYN0001", "SYN0002", "SYNTHETIC", "exams", "png_case", ".dcm", "mammodetr-serve-", ".upload",
                   "Jane", "truncated.dcm"):
        assert secret not in log, f"{secret!r} in the server's log"


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    hdrs = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
    conn.request(method, path, body=body, headers=hdrs)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, dict(res.getheaders()), data


def get_json(server, path, method="GET", **kw):
    status, headers, data = request(server, method, path, **kw)
    return status, json.loads(data)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "mammodetrtestboundary"
    parts = []
    for name, content in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def first_exam(server) -> dict:
    return get_json(server, "/api/exams")[1]["exams"][0]


# ---- the API ------------------------------------------------------------------------------------------------

def test_exams_are_listed_by_opaque_ids_with_their_views(server):
    status, body = get_json(server, "/api/exams")
    assert status == 200
    exams = {e["label"]: e for e in body["exams"]}
    assert set(exams) == {"exams#1", "exams#2", "png_case"}
    assert exams["exams#1"]["missing_views"] == [] and exams["exams#2"]["missing_views"] == ["LMLO"]
    assert set(exams["png_case"]["views"]) == {"RCC", "LCC"}
    text = json.dumps(body)
    assert "SYN0" not in text and str(server.tmpdir) not in text and "/" not in "".join(exams)
    for e in body["exams"]:
        assert re.fullmatch(r"[0-9a-f]{16}", e["id"])


def test_predict_gives_image_breast_and_exam_records(server):
    exam = first_exam(server)
    status, body = get_json(server, f"/api/exams/{exam['id']}/predict", method="POST")
    assert status == 200
    kinds = [r["record"] for r in body["records"]]
    assert kinds == ["image"] * 4 + ["breast", "breast", "exam"]
    images = [r for r in body["records"] if r["record"] == "image"]
    breasts = {r["laterality"]: r for r in body["records"] if r["record"] == "breast"}
    for lat in "RL":  # breast = max of its views (the default aggregation)
        assert breasts[lat]["p_malignant"] == pytest.approx(max(r["p_malignant"] for r in images
                                                                if r["laterality"] == lat), abs=1e-6)
    ex = body["records"][-1]
    assert ex["p_malignant"] == pytest.approx(max(b["p_malignant"] for b in breasts.values()), abs=1e-6)
    assert ex["threshold"] == 0.5 and body["operating_point"]["threshold"] == 0.5
    assert {r["image_id"] for r in images} == set(exam["views"].values())
    assert all(not r["file_name"].startswith("/") for r in images)
    assert get_json(server, f"/api/exams/{exam['id']}/predict", method="POST")[1] == body  # cached, same


def test_pixels_are_16_bit_with_windows_and_gradcam_on_the_same_grid(server):
    exam = first_exam(server)
    image_id = exam["views"]["RCC"]
    status, info = get_json(server, f"/api/images/{image_id}")
    assert status == 200 and info["view"] == "RCC" and info["original_width"] == 104
    status, headers, data = request(server, "GET", f"/api/images/{image_id}/pixels")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    pixels = np.frombuffer(data, "<u2").reshape(info["height"], info["width"])
    assert pixels.max() > 1000 and info["windows"][-1]["name"] == "full range"
    status, cam = get_json(server, f"/api/images/{image_id}/gradcam", method="POST")
    assert status == 200 and (cam["width"], cam["height"]) == (info["width"], info["height"])


# ---- security -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "10.0.0.1"])
def test_a_foreign_host_header_is_refused(server, host):
    for path in ("/", "/api/exams", "/static/viewer.js"):
        status, _, body = request(server, "GET", path, headers={"Host": host})
        assert status == 403 and b"host not allowed" in body


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "viewer.lan:{port}"])
def test_loopback_hosts_and_allowed_names_are_served(server, host):
    status, _, _ = request(server, "GET", "/api/info", headers={"Host": host.format(port=server.port)})
    assert status == 200


@pytest.mark.parametrize("path", [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd", "/api/images/../../etc/passwd", "/api/images/%2Fetc%2Fpasswd/pixels",
    "/api/images/0123456789abcdef/pixels", "/api/images/exams%2F000001.dcm", "/static/..%2F..%2Fpyproject.toml",
    "/static/viewer.py", "/api/exams/..%2F/predict",
])
def test_paths_and_unknown_ids_never_reach_a_file(server, path):
    method = "POST" if path.endswith("predict") else "GET"
    status, _, body = request(server, method, path)
    assert status in (404, 405) and b"root:" not in body and b"[project]" not in body


def test_a_cross_origin_post_is_refused(server):
    exam = first_exam(server)
    path = f"/api/exams/{exam['id']}/predict"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{server.port + 1}"}, {"Sec-Fetch-Site": "cross-site"}):
        status, _, body = request(server, "POST", path, headers=headers)
        assert status == 403 and b"cross-origin" in body
    status, _, _ = request(server, "GET", "/api/exams", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = request(server, "POST", path, headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 200


def test_oversize_and_too_many_uploads_are_refused(server):
    big, ctype = multipart([("big.dcm", b"\0" * (MAX_MB * 2**20 + 10))])
    status, _, body = request(server, "POST", "/api/upload", body=big, headers={"Content-Type": ctype})
    assert status == 413
    many, ctype = multipart([(f"f{i}.dcm", b"x") for i in range(4)])
    status, _, body = request(server, "POST", "/api/upload", body=many, headers={"Content-Type": ctype})
    assert status == 413 and b"at most 3" in body
    # a body that lies about its length is cut off when the stream passes the cap
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/api/upload", skip_host=True)
    conn.putheader("Host", f"127.0.0.1:{server.port}")
    conn.putheader("Content-Type", ctype)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    head = ('--mammodetrtestboundary\r\nContent-Disposition: form-data; name="files"; filename="c.dcm"\r\n'
            "\r\n").encode()
    conn.send(f"{len(head):x}\r\n".encode() + head + b"\r\n")
    try:
        for _ in range(MAX_MB * 4 + 4):
            chunk = b"\0" * 2**19
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert conn.getresponse().status == 413
    conn.close()
    assert not [p for p in server.tmpdir.rglob("*.upload")]  # partial files deleted


def test_upload_checks_rows_x_columns_before_decoding_and_keeps_server_made_names(server, viewer_data):
    import pydicom

    ds = pydicom.dcmread(viewer_data.upload_dicom)
    ds.Rows, ds.Columns = 20000, 20000  # announces 400 Mpixels; the 27 kB of pixel data are never decoded
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body, ctype = multipart([("huge.dcm", buf.getvalue()), ("PATIENT_Jane_Doe.dcm",
                                                            viewer_data.upload_dicom.read_bytes())])
    status, out = get_json(server, "/api/upload", method="POST", body=body, headers={"Content-Type": ctype})
    assert status == 200 and len(out["exams"]) == 1
    assert len(out["errors"]) == 1 and "huge.dcm" in out["errors"][0]["error"] and "too large" in \
        out["errors"][0]["error"]
    folders = list(server.tmpdir.glob("mammodetr-serve-*"))
    assert len(folders) == 1 and stat.S_IMODE(folders[0].stat().st_mode) == 0o700
    saved = [p.name for p in folders[0].iterdir()]
    assert len(saved) == 1 and re.fullmatch(r"[0-9a-f]{24}\.upload", saved[0])  # the refused file is gone
    status, pred = get_json(server, f"/api/exams/{out['exams'][0]['id']}/predict", method="POST")
    assert status == 200 and "Jane" not in json.dumps(pred)


def test_every_response_carries_a_strict_content_security_policy(server):
    for path in ("/", "/static/viewer.js", "/api/info", "/api/images/nope"):
        _, headers, _ = request(server, "GET", path)
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in csp


def test_the_page_has_no_inline_script_style_or_handler():
    html = (Path(__file__).parents[2] / "src/mammodetr/serve/static/index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_a_file_that_fails_is_reported_to_the_client_not_to_the_log(server, viewer_data):
    data = viewer_data.upload_dicom.read_bytes()
    body, ctype = multipart([("truncated.dcm", data[:-5000])])  # the header is fine, the pixels are cut short
    status, out = get_json(server, "/api/upload", method="POST", body=body, headers={"Content-Type": ctype})
    assert status == 200
    status, pred = get_json(server, f"/api/exams/{out['exams'][0]['id']}/predict", method="POST")
    image, name = pred["records"][0], out["exams"][0]["label"].replace("upload ", "upload-") + "-1.dcm"
    assert status == 200 and "truncated" in image["error"] and image["file_name"] == name
    assert str(server.tmpdir) not in image["error"] and image["error"].startswith(f"{name}: ")
