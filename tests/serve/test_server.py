"""``mammodetr serve`` start-up: the model flags, the loud warning off loopback, clean-up of the upload folder."""

import pytest

from mammodetr.cli import main
from mammodetr.inference.exam import ExamOptions


def test_model_flag_without_onnx_support_is_one_clear_line(monkeypatch, tmp_path, capsys):
    import sys

    pytest.importorskip("starlette")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as in an installation without mammodetr[onnx]
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    assert main(["serve", "--model", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs mammodetr[onnx]" in err[0]


def test_checkpoint_or_model_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "--checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("host, loud", [("0.0.0.0", True), ("192.168.1.20", True), ("127.0.0.1", False),
                                        ("::1", False)])
def test_a_non_loopback_address_is_announced_loudly_and_uploads_are_deleted(monkeypatch, capsys, host, loud):
    import socket

    from mammodetr.serve import server
    from mammodetr.serve.options import ServeOptions
    from mammodetr.serve.store import ExamStore
    from mammodetr.serve.viewer import Viewer

    uvicorn = pytest.importorskip("uvicorn")
    opened = []
    monkeypatch.setattr(server, "open_socket", lambda h, p: opened.append(h) or socket.socket())  # never bound
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    store = ExamStore()
    (store.upload_dir / "x.upload").write_bytes(b"1")

    class FakePredictor:
        meta = {}

    viewer = Viewer(FakePredictor(), store, ServeOptions(host=host, port=0), ExamOptions())
    server.run_server(viewer)
    captured = capsys.readouterr()
    assert ("WARNING: listening on" in captured.err) is loud and opened == [host]
    assert "research use only" in captured.out
    assert not store.upload_dir.exists()
