"""Text to vectors: the encoder, its runtimes (torch, OpenVINO fp32 and int8, the lean runner), the
export cache, built-in models, chunking and encoding on a Ray cluster."""
