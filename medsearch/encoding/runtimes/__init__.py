"""Encoder runtimes: one interface (base.py: Runtime, and the Runner it loads), one module per
runtime family (torch.py; openvino.py for fp32 and int8, with openvino_export.py making the exports
and openvino_model.py, the lean runner, running them), the registry by name (registry.py) and the
measured choice that `auto` means on this CPU (auto.py)."""
