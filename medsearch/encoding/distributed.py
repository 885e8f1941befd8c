"""Corpus encoding on a Ray cluster (`medsearch index --ray`): Ray Data's `map_batches` over an
actor pool of encoders, one model load per actor (a GPU each when the cluster has them), the
vectors back in passage order for the FAISS or Qdrant backend to ingest. Each actor runs the same
Encoder as a local encode, so the vectors are the same to float tolerance.

Only passages go to the cluster: the driver keeps its own encoder for the tokenizer (chunking),
the fingerprint and queries. On a real cluster the model must load on every node (the embedded
default does wherever medsearch is installed; a local folder must be on shared storage).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from medsearch.encoding.encoder import Encoder
from medsearch.errors import BackendUnavailableError, BadInputError, MissingExtraError

CPUS_PER_ACTOR = 2  # torch runs its own threads inside each actor


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError("--ray needs the 'distributed' extra: pip install 'medsearch[distributed]'",
                                "distributed") from None
    return ray


class _EncoderActor:
    """One encoder per Ray actor, loaded once, encoding the batches it is given."""

    def __init__(self, spec: str, runtime: str, batch_size: int, device: str | None):
        self.encoder = Encoder(spec, device=device, batch_size=batch_size, runtime=runtime)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"position": batch["position"], "vector": self.encoder.encode_passages(list(batch["text"]))}


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` ('auto': the one this machine belongs to), or start a local
    Ray with this machine's CPUs when None; once per process."""
    ray = _ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except ConnectionError as err:
        raise BackendUnavailableError(f"cannot reach the Ray cluster at {address}: {err}") from None


def encode_on_ray(encoder: Encoder, passages: list[str], *, address: str | None = None, actors: int | None = None,
                  batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """`encoder.encode_passages(passages)`, computed by an actor pool on the Ray cluster."""
    ray = _ray()
    connect(address)
    if not passages:
        return np.empty((0, encoder.dim), dtype=np.float32)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if actors and gpus and actors > gpus:  # an actor holds a GPU: more would wait for one forever
        raise BadInputError(f"the Ray cluster has {gpus} GPUs and each encoder actor takes one: ask for at most {gpus} actors")
    size = actors or (gpus if gpus else max(1, cpus // CPUS_PER_ACTOR))
    batch = batch_size or encoder.batch_size
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    dataset = ray.data.from_items([{"position": i, "text": text} for i, text in enumerate(passages)])
    encoded = dataset.map_batches(
        _EncoderActor,
        fn_constructor_kwargs={"spec": encoder.spec, "runtime": encoder.runtime, "batch_size": batch,
                               "device": "cuda" if gpus else "cpu"},
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=1 if gpus else 0,
        num_cpus=None if gpus else min(CPUS_PER_ACTOR, cpus),
    )
    positions, vectors = [], []
    try:
        for part in encoded.iter_batches(batch_format="numpy", batch_size=None):
            positions.append(part["position"])
            vectors.append(part["vector"])
    except ray.exceptions.RayError as err:  # an actor failed (model not loadable on a node, out of memory)
        raise BackendUnavailableError(f"encoding on Ray failed: {str(err).strip().splitlines()[-1]}") from None
    order = np.argsort(np.concatenate(positions), kind="stable")
    return np.ascontiguousarray(np.concatenate(vectors)[order], dtype=np.float32)


class RayEncoder(Encoder):
    """An Encoder whose passages are encoded on a Ray cluster; everything else (queries, tokenizer,
    fingerprint, runtime) is the local `encoder`'s, so indexes record the same model."""

    def __init__(self, encoder: Encoder, address: str | None = None, actors: int | None = None):  # noqa: super not called
        self.local = encoder
        self.address = address
        self.actors = actors

    def __getattr__(self, name):  # every attribute but the ones above comes from the local encoder
        if name == "local":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return encode_on_ray(self.local, list(texts), address=self.address, actors=self.actors, progress=progress)
