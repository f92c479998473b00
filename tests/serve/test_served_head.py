"""`ppdeploy serve ppocrv4-rec --head ctc_greedy`: the real server answers tritonclient with the head's two small
outputs, equal to the argmax and max of the softmax the plain model returns."""
from __future__ import annotations

import numpy as np
import pytest

from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB

pytestmark = pytest.mark.slow


def test_rec_with_the_ctc_greedy_head_over_kserve_v2(rec_runner):
    import tritonclient.http as triton_http

    args = ["ppocrv4-rec", "--name", "rec", "--head", "ctc_greedy", "--backend", "onnxruntime", "--threads", "1",
            "--max-batch-size", "4"]
    with ServerProcess(args) as srv:
        client = triton_http.InferenceServerClient(srv.url.removeprefix("http://"))
        outputs = {o["name"]: o for o in client.get_model_metadata("rec")["outputs"]}
        assert outputs == {CTC_INDEX: {"name": CTC_INDEX, "datatype": "INT64", "shape": [-1, -1]},
                           CTC_PROB: {"name": CTC_PROB, "datatype": "FP32", "shape": [-1, -1]}}
        x = np.random.default_rng(5).random((2, 3, 48, 320), dtype=np.float32)
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("rec", [tensor])
        client.close()
    (probs,) = rec_runner.infer({"x": x}).values()
    np.testing.assert_array_equal(result.as_numpy(CTC_INDEX), probs.argmax(axis=2))
    np.testing.assert_allclose(result.as_numpy(CTC_PROB), probs.max(axis=2), rtol=1e-5, atol=1e-6)
