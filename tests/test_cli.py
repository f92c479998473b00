"""The `ppdeploy` console command as a user runs it (a real subprocess)."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest


def ppdeploy(*args, cache=None, check=True):
    env = dict(os.environ)
    if cache is not None:
        env["PPDEPLOY_CACHE"] = str(cache)
        # reuse the already-installed private converter instead of installing it again per temp cache
        env["PPDEPLOY_P2O_LEGACY_DIR"] = str(_legacy_dir())
    proc = subprocess.run([sys.executable, "-m", "ppdeploy", *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"ppdeploy {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _legacy_dir():
    from ppdeploy.convert.routes import ensure_legacy_installed

    return ensure_legacy_installed()


@pytest.mark.slow
def test_run_twice_second_is_served_from_cache(tmp_path):
    x = np.random.default_rng(0).random((2, 3, 48, 192), np.float32)
    np.save(tmp_path / "x.npy", x)
    cache = tmp_path / "cache"
    first = json.loads(ppdeploy("run", "ppocr-cls", "-b", "onnxruntime", "-i", str(tmp_path / "x.npy"), "--json",
                                "--save", str(tmp_path / "out.npz"), cache=cache).stdout)
    second = json.loads(ppdeploy("run", "ppocr-cls", "-b", "onnxruntime", "-i", str(tmp_path / "x.npy"), "--json",
                                 cache=cache).stdout)
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["timings_s"]["build"] == 0 and "convert" in second["timings_s"]
    assert first["outputs"]["softmax_0.tmp_0"]["shape"] == [2, 2]
    saved = np.load(tmp_path / "out.npz")["softmax_0.tmp_0"]
    np.testing.assert_allclose(saved.sum(1), 1.0, atol=1e-5)  # softmax rows

    listing = ppdeploy("cache", "ls", cache=cache).stdout
    assert "onnx" in listing and "engine" in listing and "BROKEN" not in listing
    assert "removed 2 entries" in ppdeploy("cache", "clear", cache=cache).stdout


@pytest.mark.slow
def test_run_with_the_ctc_greedy_head(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((1, 3, 48, 320), np.float32))
    out = json.loads(ppdeploy("run", "ppocrv4-rec", "-b", "onnxruntime", "--head", "ctc_greedy",
                              "-i", str(tmp_path / "x.npy"), "--json").stdout)["outputs"]
    assert set(out) == {"ctc_index", "ctc_prob"} and out["ctc_index"]["shape"] == [1, 40]
    assert "--head" not in ppdeploy("verify", "--help").stdout  # verify compares with Paddle's own outputs


def test_user_errors_exit_2_with_a_message(tmp_path):
    proc = ppdeploy("run", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "model path does not exist" in proc.stderr and "Traceback" not in proc.stderr
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 48, 192), np.float64))
    proc = ppdeploy("run", "ppocr-cls", "-b", "onnxruntime", "-i", str(tmp_path / "bad.npy"), check=False)
    assert proc.returncode == 2 and "dtype float64" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_backends_and_reasons():
    info = json.loads(ppdeploy("doctor", "--json").stdout)
    assert info["backends"]["onnxruntime"]["available"] is True
    assert info["backends"]["openvino"]["available"] is True
    missing = [b for b in info["backends"].values() if not b["available"]]
    assert all(b["reason"] for b in missing)  # every unavailable backend says why
    assert info["packages"]["paddlepaddle"] and "legacy .pdmodel" in info["conversion_routes"]


@pytest.mark.slow
def test_quickstart_verifies_every_bundled_model_and_reads_pages(capsys, caplog, recwarn):
    from ppdeploy.cli import main

    with caplog.at_level(logging.WARNING):
        assert main(["quickstart", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    # the first screen a user sees warns about nothing of its own (e.g. its demo model's training mode)
    assert not [r for r in caplog.records if r.name.startswith("ppdeploy") and r.levelno >= logging.WARNING]
    assert not [w for w in recwarn if "training mode" in str(w.message)]
    for model in ("ppocrv4-det", "ppocrv4-rec", "ppocr-cls", "shapes-cls (PIR)"):
        rows = [ln for ln in out.splitlines() if model in ln]
        assert len(rows) == 3 and all("PASS" in ln for ln in rows), rows  # openvino, onnxruntime, paddle
    assert "FAIL" not in out
    accuracy = float(out.split("character accuracy ")[1].split("%")[0])
    assert accuracy > 95.0  # the real trained models reading rendered pages, scored against the labels


def test_bad_inputs_give_one_line_errors_not_tracebacks(tmp_path):
    # an engine error during `run`: PP-OCRv4 det cannot broadcast its FPN at 33 x 33 (ONNX Runtime raises Fail)
    np.save(tmp_path / "odd.npy", np.zeros((1, 3, 33, 33), np.float32))
    proc = ppdeploy("run", "ppocrv4-det", "-b", "onnxruntime", "-i", str(tmp_path / "odd.npy"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "onnxruntime failed to run ch_PP-OCRv4_det_infer on inputs {'x': [1, 3, 33, 33]}: Fail:" in proc.stderr
    # a corrupt .npz for `verify` (and for `run`)
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.zeros((1, 3, 48, 192), np.float32))
    npz.write_bytes(npz.read_bytes()[:200])
    for cmd in (["verify", "ppocr-cls", "-b", "onnxruntime"], ["run", "ppocr-cls", "-b", "onnxruntime"]):
        proc = ppdeploy(*cmd, "-i", str(npz), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{npz} is not a readable .npz archive (BadZipFile" in proc.stderr
    # a corrupt model: every backend of the chain is tried, and the one-line error says why each failed
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    proc = ppdeploy("run", str(bad), "-b", "openvino,onnxruntime", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count(f"{bad} is not a readable ONNX model (DecodeError") >= 2


def test_a_config_yaml_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_bytes(b"source: ppocr-cls\n# caf\xe9\n")
    proc = ppdeploy("serve", "--repo", str(tmp_path), "--port", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "config.yaml" in proc.stderr and "UTF-8" in proc.stderr
