"""The embedding service, started for real on 127.0.0.1 (Ray Serve, HTTP)."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.serve.conftest import deploy, free_port, own_serve_env, replica_processes
from trainers.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PROMPT = "query: "


TRAINED_DIMS = (384, 128, 64)


@pytest.fixture(scope="module")
def tiny_app(serve_url, tiny_model_path, tmp_path_factory):
    import shutil

    from trainers.models import write_matryoshka_info

    # A copy that says which dims it was trained on, as every exported model does.
    folder = shutil.copytree(tiny_model_path, tmp_path_factory.mktemp("served") / "tiny")
    write_matryoshka_info(folder, TRAINED_DIMS)
    url = deploy(
        serve_url,
        {
            "model": str(folder),
            "name": "tiny",
            "query_prompt": PROMPT,
            "max_inputs": 8,
            "max_body_bytes": 64 * 1024,
        },
        "tiny",
        "/tiny",
    )
    return url, SentenceTransformer(str(tiny_model_path), device="cpu")


def post(url, payload, **kwargs):
    return httpx.post(f"{url}/v1/embeddings", json=payload, timeout=30, **kwargs)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_health_and_models(tiny_app):
    url, _ = tiny_app
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "tiny", "replicas": 1}
    ready = httpx.get(f"{url}/health/ready", timeout=30).json()
    assert ready["status"] == "ready" and ready["encode_ms"] > 0
    models = httpx.get(f"{url}/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["dimensions"] == 384
    assert models["data"][0]["matryoshka_dimensions"] == list(TRAINED_DIMS)


def test_a_dimension_the_model_was_not_trained_on_is_served_but_flagged(tiny_app):
    url, model = tiny_app
    trained = post(url, {"input": "a text editor", "dimensions": 128})
    assert trained.status_code == 200 and "x-dimensions-untrained" not in trained.headers
    untrained = post(url, {"input": "a text editor", "dimensions": 100})
    assert untrained.status_code == 200 and untrained.headers["x-dimensions-untrained"] == "100"
    expected = unit(model.encode(["a text editor"])[0][:100])
    np.testing.assert_allclose(untrained.json()["data"][0]["embedding"], expected, atol=1e-5)


def test_unknown_routes_answer_in_the_error_envelope(tiny_app):
    url, _ = tiny_app
    reply = httpx.get(f"{url}/v1/nothing-here", timeout=30)
    assert reply.status_code == 404 and reply.json()["error"]["message"]
    # The embeddings route answers POST ahead of FastAPI; FastAPI still knows it for the rest.
    reply = httpx.get(f"{url}/v1/embeddings", timeout=30)
    assert reply.status_code == 405 and "Method Not Allowed" in reply.json()["error"]["message"]


def test_embeddings_equal_in_process_encode_full_and_truncated(tiny_app):
    url, model = tiny_app
    texts = ["a terminal text editor", "Python bindings for Qt", "network time daemon"]
    reply = post(url, {"input": texts, "model": "tiny"}).json()
    assert reply["object"] == "list" and reply["model"] == "tiny"
    assert [d["index"] for d in reply["data"]] == [0, 1, 2] and reply["data"][0][
        "object"
    ] == "embedding"
    # usage counts the model's own tokens (special tokens included), as the replica encodes them
    tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True)["input_ids"])
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    expected = model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose([d["embedding"] for d in reply["data"]], expected, atol=1e-5)

    truncated = post(url, {"input": texts, "dimensions": 64}).json()
    got = np.array([d["embedding"] for d in truncated["data"]])
    assert got.shape == (3, 64)
    np.testing.assert_allclose(got, unit(expected[:, :64]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_whitespace_is_text_and_is_embedded_only_the_empty_string_is_refused(tiny_app):
    url, model = tiny_app
    texts = ["\t\n", "  ", "a text editor"]
    reply = post(url, {"input": texts})
    assert reply.status_code == 200
    expected = model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose([d["embedding"] for d in reply.json()["data"]], expected, atol=1e-5)
    refused = post(url, {"input": ["ok", ""]}).json()["error"]
    assert refused["message"] == "input[1] is an empty string"


def test_each_response_says_its_batch_size(tiny_app):
    url, _ = tiny_app
    # One request's inputs are queued together, so on an idle replica they form one batch.
    assert post(url, {"input": ["a", "b", "c"]}).headers["x-batch-size"] == "3"
    assert post(url, {"input": "a"}).headers["x-batch-size"] == "1"


def test_base64_encoding_and_query_prompt(tiny_app):
    url, model = tiny_app
    reply = post(
        url, {"input": "text editor", "encoding_format": "base64", "dimensions": 128}
    ).json()
    vector = np.frombuffer(base64.b64decode(reply["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, unit(model.encode(["text editor"])[0][:128]), atol=1e-5)

    query = post(url, {"input": "text editor", "input_type": "query"}).json()["data"][0][
        "embedding"
    ]
    document = post(url, {"input": "text editor", "input_type": "document"}).json()["data"][0][
        "embedding"
    ]
    np.testing.assert_allclose(
        query, model.encode([PROMPT + "text editor"], normalize_embeddings=True)[0], atol=1e-5
    )
    np.testing.assert_allclose(
        document, model.encode(["text editor"], normalize_embeddings=True)[0], atol=1e-5
    )


def test_the_openai_client_works_unchanged(tiny_app):
    from openai import OpenAI

    url, model = tiny_app
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    created = client.embeddings.create(
        model="tiny", input=["a text editor", "a web browser"], dimensions=64
    )
    assert len(created.data) == 2 and len(created.data[0].embedding) == 64
    np.testing.assert_allclose(
        created.data[1].embedding, unit(model.encode(["a web browser"])[0][:64]), atol=1e-5
    )
    assert created.usage.prompt_tokens > 0
    assert [m.id for m in client.models.list().data] == ["tiny"]


BAD_REQUESTS = [
    ("empty list", {"input": []}, 400, "input"),
    ("empty string", {"input": ""}, 400, "input"),
    ("non-string item", {"input": ["ok", 3]}, 400, "input"),
    ("nested list", {"input": [["a"]]}, 400, "input"),
    ("missing input", {"model": "tiny"}, 400, "input"),
    ("too many inputs", {"input": ["x"] * 9}, 400, "input"),
    ("dimensions zero", {"input": "x", "dimensions": 0}, 400, "dimensions"),
    ("dimensions too big", {"input": "x", "dimensions": 385}, 400, "dimensions"),
    ("unknown encoding_format", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ("unknown input_type", {"input": "x", "input_type": "passage"}, 400, "input_type"),
    ("unknown model", {"input": "x", "model": "gpt"}, 404, "model"),
]


def test_every_bad_input_gets_a_4xx_envelope_and_no_replica_is_lost(tiny_app):
    url, _ = tiny_app
    before = httpx.get(f"{url}/v1/stats").json()
    for label, payload, status, param in BAD_REQUESTS:
        reply = post(url, payload)
        assert reply.status_code == status, label
        error = reply.json()["error"]
        assert error["param"] == param and error["message"] and error["type"], label
    raw = [
        ("malformed JSON", b'{"input": "x"', 400),
        ("JSON not an object", b'["x"]', 400),
        ("oversized body", b'{"input": "' + b"x" * (65 * 1024) + b'"}', 413),
    ]
    for label, body, status in raw:
        reply = httpx.post(
            f"{url}/v1/embeddings",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert reply.status_code == status, label
        assert reply.json()["error"]["message"], label
    # A very long input is truncated to the model's max tokens, not an error.
    assert post(url, {"input": "word " * 12000}).status_code == 200  # 60 KB, ~12k tokens
    assert post(url, {"input": "still fine"}).status_code == 200
    after = httpx.get(f"{url}/v1/stats").json()
    assert after["batches"] >= before["batches"] + 2, "the replica restarted (its counters reset)"


def test_api_key_is_required_when_configured(serve_url, tiny_model_path):
    url = deploy(
        serve_url,
        {"model": str(tiny_model_path), "name": "locked", "api_key_env": "TEST_EMBEDDINGS_KEY"},
        "locked",
        "/locked",
        ray_actor_options={
            "num_cpus": 0.25,
            "runtime_env": {"env_vars": {"TEST_EMBEDDINGS_KEY": "s3cret"}},
        },
    )
    assert post(url, {"input": "x"}).status_code == 401
    assert (
        post(url, {"input": "x"}, headers={"Authorization": "Bearer wrong"}).json()["error"]["type"]
        == "authentication_error"
    )
    assert post(url, {"input": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    from ray import serve

    serve.delete("locked")


@pytest.mark.slow
def test_bundled_minilm_is_served_exactly_and_a_large_request_is_shared(serve_url):
    """256 passages in one request, then a query, on two 1-thread replicas. Both replicas
    encode the passages (half goes to the other replica), and the query is answered well
    before them: the request joins each batch queue 32 texts at a time, so the query waits
    for the batch being encoded and at most the next (a replica reads a request only between
    batches). All at once, the query came after all of them (answered with the last). Then
    small requests: each embedding equals in-process encode at full and truncated dims."""
    from serve.loadtest import sample_texts
    from trainers.models import load_model

    url = deploy(
        serve_url, {"model": "bundled:minilm", "name": "fair"}, "fair", "/fair", num_replicas=2
    )
    replicas = replica_processes("fair")
    assert len(replicas) == 2
    passages = sample_texts(256, kind="passages")

    async def big_then_query():
        async with httpx.AsyncClient(timeout=120) as client:
            route = f"{url}/v1/embeddings"
            big = asyncio.create_task(client.post(route, json={"input": passages}))
            await asyncio.sleep(0.5)  # its first batches are being encoded
            query = await client.post(route, json={"input": "a text editor"})
            query_done = time.perf_counter()
            return query_done, await big, time.perf_counter(), query.status_code

    cpu_before = [sum(p.cpu_times()[:2]) for p in replicas]
    started = time.perf_counter()
    query_done, big, big_done, query_status = asyncio.run(big_then_query())
    cpu = [sum(p.cpu_times()[:2]) - b for p, b in zip(replicas, cpu_before, strict=True)]
    assert query_status == big.status_code == 200
    print(f"query answered at {query_done - started:.2f} s, passages {big_done - started:.2f} s")
    print(f"replica CPU seconds meanwhile: {cpu}")
    assert query_done - started < 0.75 * (big_done - started)
    assert min(cpu) > 0.3 * max(cpu), cpu  # both encoded, not one of them alone
    got = np.array([d["embedding"] for d in big.json()["data"]])
    model = load_model("bundled:minilm")
    expected = model.encode(passages, normalize_embeddings=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # in order, whoever encoded them

    # Served exactly, small requests too: full and truncated dims, and usage.
    texts = ["Real-time strategy game of ancient warfare", "GNU C compiler", "x" * 5000]
    expected = model.encode(texts, normalize_embeddings=True)
    for dims in (None, 256, 64):
        reply = post(url, {"input": texts, "dimensions": dims} if dims else {"input": texts}).json()
        got = np.array([d["embedding"] for d in reply["data"]])
        np.testing.assert_allclose(got, unit(expected[:, : dims or 384]), atol=1e-5)
    # usage: the model's own tokens, truncated at its max_seq_length as encode truncates
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    assert reply["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    from ray import serve

    serve.delete("fair")


def _replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["EmbeddingService"]
    return status.replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_autoscaling_goes_up_under_load_and_back_down(serve_url, tiny_model_path):
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }
    url = deploy(
        serve_url,
        {"model": str(tiny_model_path), "name": "scaled"},
        "scaled",
        "/scaled",
        num_replicas="auto",
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": 0.25},
    )
    assert _replicas("scaled") == 1
    counts = [(0.0, 1)]
    started = time.monotonic()
    stop = False
    failed: list[tuple[int, str]] = []

    def client():
        with httpx.Client(timeout=30) as session:
            sent = 0
            while not stop and sent < 3000:  # bounded
                answer = session.post(f"{url}/v1/embeddings", json={"input": ["load " * 50] * 4})
                if answer.status_code != 200:
                    failed.append((answer.status_code, answer.text[:200]))
                sent += 1

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        while time.monotonic() - started < 60 and counts[-1][1] < 2:
            time.sleep(0.5)
            counts.append((time.monotonic() - started, _replicas("scaled")))
        time.sleep(10)  # the load goes on while the new replica starts taking requests
        stop = True
        for f in futures:
            f.result()
    assert counts[-1][1] >= 2, f"never scaled up: {counts}"
    # A replica that is still loading its model must get no request (it would have to fail it).
    assert not failed, f"{len(failed)} requests failed while scaling up, first: {failed[0]}"
    while time.monotonic() - started < 150 and counts[-1][1] > 1:
        time.sleep(1)
        counts.append((time.monotonic() - started, _replicas("scaled")))
    print("replicas over time (s, running):", [(round(t, 1), n) for t, n in counts])
    assert counts[-1][1] == 1, f"never scaled back down: {counts}"
    from ray import serve

    serve.delete("scaled")


def test_loadtest_smoke(tiny_model_path):
    port = free_port()
    env = own_serve_env()
    done = subprocess.run(
        [
            sys.executable,
            "serve/loadtest.py",
            "--model",
            str(tiny_model_path),
            "--start",
            "--url",
            f"http://127.0.0.1:{port}",
            "--clients",
            "1,4",
            "--requests",
            "24",
            "--time-limit",
            "30",
            "--rounds",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| clients | requests | failed | req/s | p50 ms")
    assert len(lines) == 4  # header, rule, 2 levels
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for row in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
        assert int(cells["requests"]) == 2 * 24 and cells["failed"] == "0"  # 2 rounds of 24
        assert len(cells["ratio per round"].split()) == 2
        assert float(cells["mean batch"]) >= 1.0  # from the responses' X-Batch-Size


def test_loadtest_refuses_other_hosts():
    from serve import loadtest

    with pytest.raises(ConfigError, match="only targets this machine"):
        loadtest.check_loopback("http://10.0.0.1:8000")


@pytest.mark.parametrize("flag", ["--rounds", "--requests"])
def test_loadtest_refuses_fewer_than_one(flag, capsys):
    from serve import loadtest

    with pytest.raises(SystemExit) as exited:
        loadtest.main(["--model", "bundled:tiny", flag, "0"])
    assert (
        exited.value.code == 2
        and f"argument {flag}: 0: must be at least 1" in capsys.readouterr().err
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_each_onnx_backend_serves_what_it_encodes_in_process(
    serve_url, tiny_model_path, tmp_path_factory, backend
):
    import shutil

    from trainers import encoders, export

    folder = shutil.copytree(tiny_model_path, tmp_path_factory.mktemp(backend) / "tiny")
    export.export(folder)  # exported, not gated: serving it needs allow_ungated
    name = f"tiny-{backend}"
    url = deploy(
        serve_url,
        {"model": str(folder), "name": name, "backend": backend, "allow_ungated": True},
        name,
        f"/{name}",
    )
    served = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert served["backend"] == backend
    assert served["backend_reason"].startswith(
        "requested with --allow-ungated although it was never"
    )
    texts = ["a terminal text editor", "Python bindings for Qt", "network time daemon"]
    encoder = encoders.OnnxEncoder(folder, backend)
    expected = encoder.encode(texts)
    for dims in (None, 64):
        reply = post(url, {"input": texts, "dimensions": dims} if dims else {"input": texts})
        got = np.array([d["embedding"] for d in reply.json()["data"]])
        np.testing.assert_allclose(got, unit(expected[:, : dims or 384]), atol=1e-5)
        # usage: the model's own tokens, counted from the tokenization the backend encoded
        tokens = sum(len(ids) for ids in encoder.tokenizer(texts, truncation=True)["input_ids"])
        assert reply.json()["usage"]["prompt_tokens"] == tokens
    from ray import serve

    serve.delete(name)
    serve.delete(f"{name}-health")


def perturbed_copy(source: Path, destination: Path, seed: int) -> Path:
    """A different real model: ``source`` with seeded noise added to its token embeddings."""
    import torch

    model = SentenceTransformer(str(source), device="cpu")
    weights = model[0].auto_model.get_input_embeddings().weight
    with torch.no_grad():
        weights.add_(torch.randn(weights.shape, generator=torch.Generator().manual_seed(seed)))
    model.save(str(destination))
    return destination


@pytest.fixture(scope="module")
def precision_folder(tiny_model_path, debian_sample_file, tmp_path_factory):
    """A tiny model folder, exported, calibrated and gated for real, at a tolerance that
    allows the quantized (precision, dim) that lost least and refuses those that lost more."""
    from tests.conftest import gated_tiny
    from trainers import gate
    from trainers.models import matryoshka_info

    folder, config, task = gated_tiny(
        tmp_path_factory, tiny_model_path, debian_sample_file, TRAINED_DIMS, "gated"
    )
    gate.gate(folder, task, config, precision_tolerance=1.0)
    rows = matryoshka_info(folder)["precisions"]["backends"]["torch"]["dims"]
    least = min(rows[str(d)][p]["drop"] for d in TRAINED_DIMS for p in ("int8", "binary"))
    gate.gate(folder, task, config, precision_tolerance=least)
    return folder


def test_each_precision_is_quantize_embeddings_of_the_float_vectors(serve_url, precision_folder):
    """Served with --allow-ungated (every precision at every dim): each quantized answer is
    sentence-transformers' quantize_embeddings of the served float vectors, calibrated on the
    embeddings the export stored in the model folder."""
    from sentence_transformers.util.quantization import quantize_embeddings

    from trainers.precision import at_dim, load_calibration

    url = deploy(
        serve_url,
        {"model": str(precision_folder), "backend": "torch", "allow_ungated": True},
        "ungated",
        "/ungated",
    )
    calibration = load_calibration(precision_folder)
    texts = ["a terminal text editor", "GNU C compiler", "x" * 300]
    for dim in (384, 128, 64, 100):
        floats = post(url, {"input": texts, "dimensions": dim}).json()["data"]
        vectors = np.array([d["embedding"] for d in floats], dtype=np.float32)
        for name in ("int8", "uint8", "binary", "ubinary"):
            answer = post(url, {"input": texts, "dimensions": dim, "encoding_format": name})
            assert answer.status_code == 200, answer.text
            got = np.array([d["embedding"] for d in answer.json()["data"]])
            expected = quantize_embeddings(
                vectors, name, calibration_embeddings=at_dim(calibration, dim)
            )
            np.testing.assert_array_equal(got, expected.astype(np.int64), err_msg=f"{name}@{dim}")
    from ray import serve

    serve.delete("ungated")


def test_a_precision_outside_its_gate_is_refused_and_models_lists_the_gate(
    serve_url, precision_folder
):
    from trainers.models import matryoshka_info
    from trainers.precision import allowed_dims

    url = deploy(serve_url, {"model": str(precision_folder), "backend": "torch"}, "gated", "/gated")
    record = matryoshka_info(precision_folder)["precisions"]
    refused = allowed = 0
    for name in ("int8", "uint8", "binary", "ubinary"):
        dims = allowed_dims(record, "torch", name)
        for dim in TRAINED_DIMS:
            answer = post(
                url, {"input": "a text editor", "dimensions": dim, "encoding_format": name}
            )
            if dim in dims:
                allowed += 1
                assert answer.status_code == 200, answer.text
                continue
            refused += 1
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["param"] == "encoding_format" and error["code"] == "invalid_request"
            assert f"not served at {dim} dims" in error["message"]
            assert "--allow-ungated" in error["message"]
            if dims:
                assert str(dims) in error["message"]
    assert allowed and refused, "the fixture's tolerance should allow one and refuse others"
    # An untrained dim was never gated: quantized output is refused there, float is served.
    assert (
        post(url, {"input": "a", "dimensions": 100, "encoding_format": "binary"}).status_code == 400
    )
    assert post(url, {"input": "a", "dimensions": 100}).status_code == 200
    (model,) = httpx.get(f"{url}/v1/models").json()["data"]
    entry = record["backends"]["torch"]
    assert model["recommended_dimension"] == entry["recommended"]
    for listed in model["precisions"]:
        row = entry["dims"][str(listed["dimensions"])]
        expected = {
            p: m["bytes"] for p, m in row.items() if m["allowed"] and p != "binary-rescored"
        }
        assert listed["precisions"] == expected
        assert listed["precisions"]["float32"] == 4 * listed["dimensions"]
    from ray import serve

    serve.delete("gated")


def test_several_models_behind_one_endpoint_each_answer_as_in_process(
    serve_url, tiny_model_path, tmp_path
):
    """Three models, at most two loaded per replica (the default and one other, LRU): each
    request's `model` gets that model's own encodings, and a model pushed out is loaded again."""
    import shutil

    alpha = shutil.copytree(tiny_model_path, tmp_path / "alpha")
    others = [
        perturbed_copy(tiny_model_path, tmp_path / n, s) for n, s in (("beta", 1), ("gamma", 2))
    ]
    url = deploy(
        serve_url,
        {"model": [str(alpha), *map(str, others)], "max_loaded_models": 2},
        "several",
        "/several",
    )
    listed = httpx.get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["alpha", "beta", "gamma"]
    assert all(m["dimensions"] == 384 and m["backend"] == "torch" for m in listed)
    texts = ["a terminal text editor", "GNU C compiler"]
    expected = {
        f.name: SentenceTransformer(str(f), device="cpu").encode(texts) for f in (alpha, *others)
    }
    assert not np.allclose(expected["alpha"], expected["beta"], atol=1e-3)
    for name in ("alpha", "beta", "gamma", "beta", None):
        payload = {"input": texts} if name is None else {"input": texts, "model": name}
        answer = post(url, payload)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == (name or "alpha")
        got = np.array([d["embedding"] for d in body["data"]])
        np.testing.assert_allclose(got, unit(expected[name or "alpha"]), atol=1e-5)
    # beta, gamma (beta pushed out: one other at a time), beta again.
    assert httpx.get(f"{url}/v1/stats").json()["model_loads"] == 3
    missing = post(url, {"input": "a", "model": "delta"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "'alpha', 'beta', 'gamma'" in missing.json()["error"]["message"]
    from ray import serve

    serve.delete("several")


def test_several_models_need_distinct_names():
    from serve.args import ServeArgs

    with pytest.raises(ValueError, match="one name"):
        ServeArgs(model=["runs/a/best", "runs/b/best"])
    with pytest.raises(ValueError, match="drop name"):
        ServeArgs(model=["runs/a/best", "runs/b/alt"], name="x")
    assert ServeArgs(model=["runs/a/best", "runs/b/alt"]).served_names == ["best", "alt"]


@pytest.mark.slow
def test_a_rollout_under_16_clients_fails_no_request(tiny_model_path, tmp_path):
    """The README's commands: a server started with `python serve/app.py`, then `python
    serve/app.py rollout --address ... --model NEW` while 16 clients send, from before the
    rollout to after it. Every request gets a 200, and the responses switch from the old
    model's name to the new one's for good.

    The server runs with a 5 s draining window instead of Serve's 30 s (the time a replica on
    its way out stays reachable while HAProxy drops it: HAProxy runs on the same machine and
    reloads within a second or two), so that the test takes seconds, not minutes. A client
    resends a request whose keep-alive connection closed before any byte of an answer, as the
    OpenAI SDK does (HAProxy reloads its configuration when replicas change, and its old
    process closes idle connections): such a request was never answered, so it cannot have been
    half-done. The resends are counted, and each request may be resent once."""
    import threading

    new = perturbed_copy(tiny_model_path, tmp_path / "new", 3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**own_serve_env(), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}
    command = [sys.executable, "serve/app.py", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--model", str(tiny_model_path), "--name", "v1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[tuple[float, int, str]] = []
    resent: list[float] = []
    done: dict[str, Any] = {}
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "rollout --address" in line:
                break
        assert "rollout --address" in lines[-1], "".join(lines)[-3000:]
        address = lines[-1].split("--address ")[1].split()[0]

        async def client(http: httpx.AsyncClient, deadline: float) -> None:
            # Until 3 s after the rollout returned (at most the deadline).
            while time.monotonic() < min(deadline, done.get("at", deadline) + 3):
                for attempt in (1, 2):
                    try:
                        answer = await http.post(f"{url}/v1/embeddings", json={"input": "a text"})
                    except httpx.RemoteProtocolError as err:
                        if attempt == 1 and "without sending a response" in str(err):
                            resent.append(time.monotonic())
                            continue
                        seen.append((time.monotonic(), 0, repr(err)))
                        break
                    except httpx.HTTPError as err:
                        seen.append((time.monotonic(), 0, repr(err)))
                        break
                    ok = answer.status_code == 200
                    model = answer.json()["model"] if ok else answer.text
                    seen.append((time.monotonic(), answer.status_code, model))
                    break

        async def load() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                await asyncio.gather(*(client(http, time.monotonic() + 150) for _ in range(16)))

        def switch() -> None:
            time.sleep(5)
            started = time.monotonic()
            done["rollout"] = subprocess.run(
                [sys.executable, "serve/app.py", "rollout", "--address", address]
                + ["--model", str(new), "--name", "v2"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=140,
            )
            done["took"] = time.monotonic() - started
            done["at"] = time.monotonic()

        switcher = threading.Thread(target=switch)
        switcher.start()
        asyncio.run(load())
        switcher.join()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    rollout = done["rollout"]
    assert rollout.returncode == 0, (rollout.stdout + rollout.stderr)[-3000:]
    assert "rolled out v2" in rollout.stdout
    failed = [s for s in seen if s[1] != 200]
    print(
        f"rollout took {done['took']:.1f} s; {len(seen)} requests, {len(failed)} failed, "
        f"{len(resent)} resent after an unanswered keep-alive close"
    )
    assert not failed, failed[:5]
    names = [name for _, _, name in seen]
    assert names[0] == "v1" and names[-1] == "v2"
    assert {name for t, _, name in seen if t > done["at"] + 1} == {"v2"}
    assert len(resent) <= 16, resent
