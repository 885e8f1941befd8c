"""Encoder runtimes (torch, openvino, openvino-int8) through sentence-transformers' backends: the
weights fingerprint, the export cache, which runtimes may search which index, the missing extra.
OpenVINO runs for real (the `openvino` extra); exports go to the test session's own cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import BUNDLED, SMALL_DOCS

from medsearch.cli import cli
from medsearch.encoding.cache import exports_root
from medsearch.encoding.encoder import Encoder, resolve_runtime
from medsearch.encoding.loading import weights_fingerprint
from medsearch.encoding.runtimes.openvino import export_folder
from medsearch.encoding.runtimes.registry import runtime_for_index
from medsearch.errors import BadInputError, MissingExtraError, ModelMismatchError
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.manifest import Manifest
from medsearch.retrieval.search import Searcher

pytest.importorskip("openvino", reason="the openvino extra is not installed")

TEXTS = [f"{d['title']}. {d['text']}" for d in SMALL_DOCS]


def copy_model(src: str, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def retrain(folder: Path, factor: float = 1.5) -> None:
    """Stand-in for a training run that saves new weights into the same folder."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    with torch.no_grad():
        next(model.parameters()).mul_(factor)
    model.save(str(folder))


def test_weights_fingerprint_follows_the_weights_not_the_copy_or_the_readme(tmp_path, tiny1024_path, minilm):
    from safetensors.torch import load_file, save_file

    minilm.model.save(str(tmp_path / "resaved"))  # every file is rewritten, tensors renamed (LayerNorm gamma/beta)
    assert weights_fingerprint(tmp_path / "resaved") == minilm.weights
    copy = copy_model(tiny1024_path, tmp_path / "copy")
    assert weights_fingerprint(copy) == weights_fingerprint(tiny1024_path)
    (copy / "README.md").write_text("a new model card")
    config = json.loads((copy / "config_sentence_transformers.json").read_text())
    config["__version__"] = {"sentence_transformers": "0.0.0"}  # re-saved by another library version
    (copy / "config_sentence_transformers.json").write_text(json.dumps(config))
    assert weights_fingerprint(copy) == weights_fingerprint(tiny1024_path)
    weights = next(copy.rglob("model.safetensors"))
    tensors = load_file(weights)
    name = next(n for n in tensors if "encoder" in n)  # a fine-tune moves the layers, not the vocabulary
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights)
    assert weights_fingerprint(copy) != weights_fingerprint(tiny1024_path)


def test_openvino_gives_torchs_vectors_and_shares_its_fingerprint(minilm):
    openvino = Encoder("default", runtime="openvino")
    assert (openvino.runtime, openvino.precision) == ("openvino", "fp32")
    torch_vectors, ov_vectors = minilm.encode_passages(TEXTS), openvino.encode_passages(TEXTS)
    assert np.min(np.sum(torch_vectors * ov_vectors, axis=1)) > 0.9999
    assert openvino.fingerprint == minilm.fingerprint
    assert openvino.weights == minilm.weights


def test_int8_is_its_own_precision_and_close_to_torch(tiny1024, tiny1024_path):
    int8 = Encoder(tiny1024_path, runtime="openvino-int8")
    assert int8.precision == "int8"
    assert int8.weights == tiny1024.weights
    assert int8.fingerprint != tiny1024.fingerprint
    cosines = np.sum(int8.encode_passages(TEXTS) * tiny1024.encode_passages(TEXTS), axis=1)
    assert cosines.min() > 0.9, cosines  # a random one-layer model: int8 is close, not equal
    export = export_folder(Path(tiny1024_path), tiny1024.weights, "openvino-int8")
    assert (export / "openvino" / "openvino_model_qint8_quantized.xml").is_file()


def test_exports_are_made_once_and_a_new_training_gets_a_new_one(tmp_path, tiny1024_path):
    copy = copy_model(tiny1024_path, tmp_path / "model")
    Encoder(str(copy), runtime="openvino")
    export = export_folder(copy, weights_fingerprint(copy), "openvino")
    made = (export / "openvino" / "openvino_model.xml").stat().st_mtime_ns
    Encoder(str(copy), runtime="openvino")
    assert (export / "openvino" / "openvino_model.xml").stat().st_mtime_ns == made  # reused
    retrain(copy)
    retrained = Encoder(str(copy), runtime="openvino")
    assert retrained.weights != export.name.split("-")[0]
    assert export_folder(copy, retrained.weights, "openvino").is_dir()  # a new export, not the stale one


def test_two_processes_exporting_at_once_both_load(tmp_path, tiny1024_path):
    copy = copy_model(tiny1024_path, tmp_path / "model")
    retrain(copy, 0.5)  # weights no other test exported
    assert not export_folder(copy, weights_fingerprint(copy), "openvino").exists()
    code = ("import sys; from medsearch.encoding.encoder import Encoder; "
            "e = Encoder(sys.argv[1], runtime='openvino'); print(e.encode_queries(['fever']).shape)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(copy)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert all("(1, 1024)" in o[0] for o in outs)
    assert (export_folder(copy, weights_fingerprint(copy), "openvino") / "openvino" / "openvino_model.xml").is_file()
    assert not [p.name for p in exports_root().iterdir() if p.name.startswith(".tmp-")]  # the loser's copy is gone


def test_an_index_built_with_one_runtime_is_searched_with_another_of_its_precision(tmp_path, tiny1024_path, small_corpus):
    path = tmp_path / "idx"
    build_index(small_corpus, path, Encoder(tiny1024_path, runtime="openvino"))
    model = open_index(path).manifest["model"]
    assert (model["runtime"], model["precision"]) == ("openvino", "fp32")
    # dense: the vectors' agreement (hybrid's min-max normalisation would magnify their float differences)
    by_torch = Searcher.open(path, runtime="torch").search(["wheeze and breathlessness"], tier="deep", mode="dense")[0]
    by_default = Searcher.open(path).search(["wheeze and breathlessness"], tier="deep", mode="dense")[0]
    assert Searcher.open(path).encoder.runtime == "openvino"  # the manifest's runtime
    assert [h.id for h in by_torch.hits] == [h.id for h in by_default.hits]
    assert np.allclose([h.score for h in by_torch.hits], [h.score for h in by_default.hits], atol=1e-4)
    with pytest.raises(ModelMismatchError, match=r"built with runtime openvino \(fp32 vectors\); queries encoded by openvino-int8 \(int8\)"):
        Searcher.open(path, runtime="openvino-int8")


def test_an_int8_index_refuses_fp32_queries_with_the_runtime_to_use(tmp_path, tiny1024_path, small_corpus):
    path = tmp_path / "idx"
    result = CliRunner().invoke(cli, ["index", str(small_corpus), "--index", str(path), "--model", tiny1024_path,
                                      "--runtime", "openvino-int8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "[openvino-int8]" in result.output
    result = CliRunner().invoke(cli, ["query", "fever", "--index", str(path), "--runtime", "torch"])
    assert result.exit_code == 1
    assert f"query with --runtime openvino-int8, or rebuild with: medsearch index CORPUS --index {path} --runtime RUNTIME" in result.output
    result = CliRunner().invoke(cli, ["query", "fever", "--index", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["results"]  # stdout is JSON only
    # and stderr says nothing (optimum-intel once warned "Could not infer whether the model was already
    # converted ..." on every int8 query; a fresh process: logging set up as a user's command has it)
    done = subprocess.run([sys.executable, "-m", "medsearch", "query", "fever", "--index", str(path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    info = json.loads(CliRunner().invoke(cli, ["info", "--index", str(path), "--json"]).output)
    assert info["model"]["runtime"] == "openvino-int8"


def test_an_index_from_before_runtimes_still_opens_with_torch(tmp_path, minilm, small_corpus):
    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    index = open_index(path)
    legacy = dict(index.manifest, model={"spec": "default", "name": minilm.name, "fingerprint": minilm.parameters_fingerprint})
    Manifest(legacy).write(index.folder)
    assert runtime_for_index(None) == "torch"
    hits = Searcher.open(path).search(["wheeze"], tier="deep")[0].hits
    assert hits[0].id == "asthma"
    with pytest.raises(ModelMismatchError, match="was built with model"):
        Searcher.open(path, runtime="openvino")


def test_missing_extra_and_unknown_runtime(monkeypatch):
    with pytest.raises(BadInputError, match="unknown runtime 'onnx'"):
        resolve_runtime("onnx")
    with pytest.raises(BadInputError, match="the index records runtime 'auto', which this version does not know"):
        runtime_for_index("auto")  # a manifest never names auto: a query must not start a measurement
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    assert resolve_runtime("auto") == "torch"
    with pytest.raises(MissingExtraError, match=r"runtime openvino-int8 needs openvino nncf \(part of medsearch's install\): pip install openvino nncf"):
        resolve_runtime("openvino-int8")
    assert runtime_for_index("openvino") == "torch"  # same vectors: torch answers for an OpenVINO-built index
    with pytest.raises(MissingExtraError, match="openvino"):
        runtime_for_index("openvino-int8")


def test_eval_compares_runtimes_side_by_side(tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(BUNDLED), "--split", "", "--cache", str(tmp_path / "cache"), "--mode", "dense",
                                      "--runtime", "torch,openvino", "--json", str(tmp_path / "r.json"), "-q"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.strip().startswith("NDCG@10"))
    assert header.split() == ["NDCG@10", "torch", "openvino", "Change"]
    report = json.loads((tmp_path / "r.json").read_text())
    by_row = {r["row"]: r for r in report["comparison"]}
    assert abs(by_row["384"]["improvement"]) < 0.005  # fp32 runtimes: the same ranking, to float ties
    assert len({m["index"] for m in report["models"]}) == 2  # each runtime encoded the corpus itself


def test_concurrent_callers_of_an_openvino_encoder_get_their_own_vectors():
    """The service encodes from several threads at once; OpenVINO's single inference request must not mix them."""
    from concurrent.futures import ThreadPoolExecutor

    encoder = Encoder("default", runtime="openvino")
    texts = [[f"{d['title']} {i}"] * (1 + i % 3) for i, d in enumerate(SMALL_DOCS * 4)]
    alone = [encoder.encode_queries(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(encoder.encode_queries, texts))
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        assert np.allclose(a, b, atol=1e-5), "encoding in threads gives the vectors encoding alone gives"


def test_add_encodes_with_the_index_runtime(tmp_path, tiny1024_path, small_corpus):
    from conftest import write_jsonl

    path = tmp_path / "idx"
    assert CliRunner().invoke(cli, ["index", str(small_corpus), "--index", str(path), "--model", tiny1024_path,
                                    "--runtime", "openvino-int8", "-q"]).exit_code == 0
    extra = write_jsonl(tmp_path / "new.jsonl", [{"id": "gout", "title": "Gout", "text": "Gout causes sudden painful swelling of the big toe joint."}])
    result = CliRunner().invoke(cli, ["add", str(extra), "--index", str(path), "-q"])
    assert result.exit_code == 0, result.output  # an fp32 encoder would be refused by the int8 index
    index = open_index(path)
    assert index.manifest["model"]["runtime"] == "openvino-int8"
    assert "gout" in index.store.hashes()
    result = CliRunner().invoke(cli, ["add", str(extra), "--index", str(path), "--runtime", "torch", "-q"])
    assert result.exit_code == 0
    assert "unchanged 1" in result.output  # nothing to encode: no model is loaded


def test_service_on_an_openvino_index_answers_concurrent_clients(tmp_path, small_corpus):
    """A real server on loopback, two encode workers without batching: every client gets the answer
    of a sequential search (the workers take turns on OpenVINO's single inference request)."""
    import urllib.parse
    from concurrent.futures import ThreadPoolExecutor

    from servers import get, uvicorn_thread

    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    path = tmp_path / "idx"
    build_index(small_corpus, path, Encoder("default", runtime="openvino"))
    searcher = Searcher.open(path)
    assert searcher.encoder.runtime == "openvino"
    queries = [f"{d['title']} symptoms" for d in SMALL_DOCS] * 2
    expected = [searcher.search([q], tier="deep", k=5)[0] for q in queries]
    app = create_app(searcher, ServerSettings(batching=False, encode_workers=2))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda q: get(port, "/search?" + urllib.parse.urlencode({"q": q, "tier": "deep", "k": 5})), queries))
    assert [status for status, _ in answers] == [200] * len(queries)
    for (_, body), want in zip(answers, expected):
        assert [h["id"] for h in body["results"]] == [h.id for h in want.hits]


VNNI = "Intel Xeon | 2 cores | avx2 avx512f avx512_vnni amx_int8"
NO_VNNI = "Intel Core | 4 cores | avx2"


def test_auto_takes_a_clear_leader_and_the_cpus_prior_within_noise():
    from medsearch.encoding.runtimes.auto import decide

    clear = decide({"torch": [2.0, 2.1, 1.9], "openvino": [1.0, 1.1, 0.9], "openvino-int8": [0.8, 0.85, 0.75]}, NO_VNNI)
    assert clear["runtime"] == "openvino-int8" and clear["sure"] and clear["runner_up"] == "openvino"  # measured wins
    clear = decide({"torch": [1.0, 1.0, 1.0], "openvino": [1.2, 1.3, 1.2], "openvino-int8": [1.5, 1.4, 1.6]}, VNNI)
    assert clear["runtime"] == "torch" and clear["sure"]  # never a runtime the timing shows slower, prior or not
    # issue 32's machine: int8 and fp32 trade places round to round: the int8 instructions decide
    noisy = {"torch": [2.0, 2.2, 2.1, 2.0], "openvino": [1.0, 1.3, 0.95, 1.2], "openvino-int8": [1.1, 1.0, 1.05, 1.0]}
    assert decide(noisy, VNNI)["runtime"] == "openvino-int8" and not decide(noisy, VNNI)["sure"]
    assert decide(noisy, NO_VNNI)["runtime"] == "openvino"
    assert "within noise" in decide(noisy, VNNI)["basis"]
    # a 1% lead in every round is no lead
    assert decide({"openvino": [1.0, 1.0, 1.0], "openvino-int8": [0.99, 0.99, 0.99]}, NO_VNNI)["runtime"] == "openvino"
    assert decide({"torch": [1.0]}, VNNI) == {"rounds": 1, "runtime": "torch", "sure": True, "basis": "the only runtime that ran"}
    # one dropped after a round (1.7x slower) never outranks those timed in every round, busy rounds or not
    assert decide({"openvino": [1.0, 2.6, 2.6], "openvino-int8": [1.7], "torch": [2.0, 2.8, 2.7]}, VNNI)["runtime"] == "openvino"


def test_auto_times_in_interleaved_rounds_until_the_leader_is_clear(monkeypatch):
    from medsearch.encoding.runtimes import auto as runtimes

    calls = []

    class Timed:
        def __init__(self, name, seconds):
            self.name, self.seconds = name, iter(seconds)

        def encode_passages(self, texts):
            calls.append(self.name)

    speeds = {"torch": [3.0] * 9, "openvino": [1.0, 0.9, 1.1, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0],
              "openvino-int8": [0.95, 1.0, 1.0, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]}
    encoders = {name: Timed(name, seconds) for name, seconds in speeds.items()}
    monkeypatch.setattr(runtimes, "_timed", lambda encoder, texts: (encoder.encode_passages(texts), next(encoder.seconds))[1])
    times = runtimes._timings(encoders, ["text"] * 8)
    assert len(times["torch"]) == 1  # 3x slower than the best after one round: not timed again
    assert len(times["openvino"]) == len(times["openvino-int8"]) == runtimes.MAX_ROUNDS  # never unanimous: every round
    assert calls[3:6] == ["torch", "openvino", "openvino-int8"]  # after one unmeasured pass each
    assert calls[6:10] == ["openvino-int8", "openvino", "openvino", "openvino-int8"]  # the first place turns
    clear = {"openvino": Timed("openvino", [1.0] * 9), "openvino-int8": Timed("openvino-int8", [0.8] * 9)}
    assert len(runtimes._timings(clear, ["text"] * 8)["openvino"]) == runtimes.MIN_ROUNDS


def test_auto_is_measured_once_per_cpu_and_model_and_shown_by_info(tmp_path, monkeypatch, tiny1024_path):
    from medsearch.encoding.runtimes import auto as runtimes

    first = resolve_runtime("auto", tiny1024_path)
    saved = json.loads(runtimes.choice_path().read_text())
    assert saved["cpu"] == runtimes.cpu_identity()
    record = saved["models"][tiny1024_path]
    assert set(record["passages_per_s"]) == {"torch", "openvino", "openvino-int8"}
    assert first == record["runtime"] and record["rounds"] >= runtimes.MIN_ROUNDS and isinstance(record["sure"], bool)
    stamp = runtimes.choice_path().stat().st_mtime_ns
    assert resolve_runtime("auto", tiny1024_path) == first  # remembered, not measured again
    assert runtimes.choice_path().stat().st_mtime_ns == stamp

    index = tmp_path / "idx"
    build_index(BUNDLED / "corpus.jsonl", index, Encoder(tiny1024_path, runtime=first))
    shown = CliRunner().invoke(cli, ["info", "--index", str(index)])
    assert f"auto  {first} for this model on this CPU, {'sure' if record['sure'] else 'not sure'}: {record['basis']}" in shown.output
    assert json.loads(CliRunner().invoke(cli, ["info", "--index", str(index), "--json"]).output)["auto_runtime"]["runtime"] == first

    saved["cpu"] = "another CPU | 64 cores | amx_int8"  # the cache travelled to another machine: measured again
    runtimes.choice_path().write_text(json.dumps(saved))
    assert runtimes.recorded(tiny1024_path) is None
    assert resolve_runtime("auto", tiny1024_path) in ("openvino", "openvino-int8", "torch")
    assert json.loads(runtimes.choice_path().read_text())["cpu"] == runtimes.cpu_identity()

    saved = json.loads(runtimes.choice_path().read_text())
    saved["models"][tiny1024_path]["passages_per_s"] = None  # a damaged record: nothing recorded, no crash
    runtimes.choice_path().write_text(json.dumps(saved))
    assert runtimes.recorded(tiny1024_path) is None
    assert CliRunner().invoke(cli, ["info", "--index", str(index)]).exit_code == 0


def test_auto_on_a_model_that_cannot_load_or_a_cache_that_cannot_be_written(tmp_path, monkeypatch, tiny1024_path):
    from medsearch.encoding.runtimes import auto as runtimes

    result = CliRunner().invoke(cli, ["index", str(BUNDLED / "corpus.jsonl"), "--index", str(tmp_path / "i"),
                                      "--model", str(tmp_path / "nope"), "--runtime", "auto"])
    assert result.exit_code == 1 and "model folder not found" in result.output and "Traceback" not in result.output
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MEDSEARCH_CACHE", str(blocked / "cache"))  # nothing can be written under a file
    monkeypatch.setattr(runtimes, "_UNWRITTEN", {})
    assert resolve_runtime("auto", tiny1024_path) == "torch"  # no export can be made: the OpenVINO runtimes are left out
    assert runtimes.recorded(tiny1024_path)["passages_per_s"].keys() == {"torch"}  # kept for this process
