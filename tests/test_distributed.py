"""Corpus encoding on Ray (`medsearch index --ray`): a real local Ray instance (this machine's 2 CPUs),
the bundled corpus, the same vectors as a local encode."""

import sys

import numpy as np
import pytest
from conftest import BUNDLED
from test_cli import assert_one_line_error, run

from medsearch.errors import MissingExtraError
from medsearch.index.folder import open_index

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    yield
    ray.shutdown()


def test_ray_encoding_of_the_bundled_corpus_equals_a_local_encode(local_ray, bundled_index, tmp_path):
    result = run("index", BUNDLED, "--index", tmp_path / "idx", "--ray", "--ray-actors", "1", "--vector-dtype", "float32",
                 "--quiet")
    assert result.exit_code == 0, result.output
    remote, local = open_index(tmp_path / "idx"), open_index(bundled_index)  # bundled_index: encoded locally
    assert remote.manifest["model"] == local.manifest["model"]
    assert remote.chunks == local.chunks == 204
    np.testing.assert_allclose(remote.backend.vectors, local.backend.vectors, atol=1e-5)
    assert run("query", "early signs of type 2 diabetes", "--index", tmp_path / "idx").exit_code == 0


def test_ray_missing_extra_names_it(monkeypatch, tmp_path):
    from medsearch.encoding.distributed import encode_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'medsearch\[distributed\]'"):
        encode_on_ray(None, ["text"])
    result = run("index", BUNDLED, "--index", tmp_path / "idx", "--ray", "--quiet")
    assert_one_line_error(result, "needs the 'distributed' extra")
    assert not (tmp_path / "idx").exists()
