"""The encoder for an index: what its manifest records of the model that built it, the runtime and
encoder that query and write it, and the check that refuses vectors of another model (or of the
same weights computed in another precision)."""

from __future__ import annotations

from medsearch.encoding.encoder import Encoder, resolve_runtime
from medsearch.encoding.runtimes.registry import runtime_for_index
from medsearch.errors import ModelMismatchError
from medsearch.index.folder import Index

__all__ = ["check_model", "index_encoder", "index_runtime", "model_fields", "same_model"]


def model_fields(encoder: Encoder) -> dict:
    """The manifest's record of the encoder: which model, its fingerprint and the runtime that encoded."""
    return {"spec": encoder.spec, "name": encoder.name, "fingerprint": encoder.fingerprint, "weights": encoder.weights,
            "runtime": encoder.runtime, "precision": encoder.precision}


def index_runtime(index: Index, runtime: str | None = None, model: str | None = None) -> str:
    """The runtime that encodes for an index: the one it was built with (or an installed one of the
    same precision) unless `runtime` names one (`auto`: this CPU's choice for the model)."""
    if runtime:
        return resolve_runtime(runtime, model or index.manifest.model["spec"])
    return runtime_for_index(index.manifest.model.get("runtime"))


def index_encoder(index: Index, model: str | None = None, device: str | None = None, runtime: str | None = None,
                  threads: int | None = None, streams: int | None = None) -> Encoder:
    """The encoder for queries and writes to an index: its model, run by index_runtime's runtime;
    `threads` and `streams` as Encoder takes them."""
    return Encoder(model or index.manifest.model["spec"], device=device, runtime=index_runtime(index, runtime, model),
                   threads=threads, streams=streams)


def same_model(index: Index, encoder: Encoder) -> bool:
    """Whether the encoder's vectors match the index's (same weights, same precision)."""
    model = index.manifest.model
    if "runtime" not in model:  # built before runtimes were recorded: the fingerprint hashed torch parameters
        same = encoder.runtime == "torch" and encoder.parameters_fingerprint == model["fingerprint"]
    else:
        same = encoder.fingerprint == model["fingerprint"]
    return same and encoder.dim == index.full_dim


def check_model(index: Index, encoder: Encoder) -> None:
    """Refuse to search an index with vectors from another model, or from the same weights computed
    in another precision (int8 vs fp32). Runtimes of one precision share a fingerprint: their vectors
    agree to float tolerance, so an index built with torch is searched with OpenVINO and back."""
    if same_model(index, encoder):
        return
    model = index.manifest.model
    if model.get("weights") and model["weights"] == encoder.weights and "runtime" in model:
        raise ModelMismatchError(
            f"{index.path} was built with runtime {model['runtime']} ({model['precision']} vectors); queries encoded by "
            f"{encoder.runtime} ({encoder.precision}) would not match them: use a {model['precision']} runtime",
            index.path, encoder.spec, runtime=model["runtime"],
        )
    raise ModelMismatchError(
        f"{index.path} was built with model '{model['name']}' (fingerprint {model['fingerprint']}), "
        f"not '{encoder.name}' (fingerprint {encoder.fingerprint}): its vectors cannot be searched with that model",
        index.path, encoder.spec,
    )
