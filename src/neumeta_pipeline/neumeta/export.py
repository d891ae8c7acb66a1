"""Export a standalone (sampled) network to ONNX and prove that onnxruntime computes the same function.

The exported graph has a symbolic batch dimension; the check runs onnxruntime at batch sizes other
than the one used for export, so a batch size silently baked into the graph (a reshape, a
specialised shape) fails here rather than in deployment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECK_BATCH_SIZES = (1, 3, 8)
# ONNX protobufs cannot exceed 2 GiB; far below that, one self-contained file is simpler to version.
EXTERNAL_DATA_BYTES = 1 << 30


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> dict:
    """Write ``model`` (one tensor in, one tensor out; run in eval mode) to ``path`` as ONNX with
    a dynamic batch dimension, then compare onnxruntime with PyTorch on seeded random inputs at
    several batch sizes.

    Raises ``RuntimeError`` when any output differs by more than ``atol + rtol * max |torch output|``
    (per batch): float32 rounding grows with the largest activations, so a network whose logits
    span 1e-2 to 1e5 (a briefly trained deep one without BatchNorm) is judged on its scale, not
    element by element.
    Returns a JSON-serialisable report of the export and the check.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        # torch.export specialises a dimension of size 1 more readily than any other size.
        x = example_input if example_input.shape[0] > 1 else example_input.repeat(2, *[1] * (example_input.dim() - 1))
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["input"],
            output_names=["output"],
            external_data=n_bytes > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
        proto = onnx.load(str(path), load_external_data=False)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        if not batch_dim.dim_param:
            raise RuntimeError(f"{path}: the exported batch dimension is fixed to {batch_dim.dim_value}, not dynamic")

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        generator = torch.Generator().manual_seed(0)
        max_abs = 0.0
        for batch in CHECK_BATCH_SIZES:
            inp = torch.randn(batch, *x.shape[1:], generator=generator, dtype=x.dtype)
            expected = model(inp.to(x.device)).detach().cpu().numpy()
            (actual,) = session.run(None, {"input": inp.numpy()})
            if actual.shape != expected.shape:
                raise RuntimeError(
                    f"onnxruntime output shape {actual.shape} != PyTorch {expected.shape} at batch size {batch}"
                )
            diff = np.abs(actual - expected)
            max_abs = max(max_abs, float(diff.max()))
            scale = float(np.abs(expected).max())
            if float(diff.max()) > atol + rtol * scale:
                raise RuntimeError(
                    f"onnxruntime disagrees with PyTorch for {path} at batch size {batch}: max |diff| "
                    f"{float(diff.max()):.3g} exceeds atol={atol:g} + rtol={rtol:g} * max |output| ({scale:.3g})"
                )
    finally:
        model.train(was_training)
    return {
        "path": str(path),
        "opset": int(opset),
        "input_shape": ["batch", *map(int, x.shape[1:])],
        "output_shape": ["batch", *map(int, expected.shape[1:])],
        "batch_sizes_checked": list(CHECK_BATCH_SIZES),
        "max_abs_diff": max_abs,
        "rtol": rtol,
        "atol": atol,
        "external_data": n_bytes > EXTERNAL_DATA_BYTES,
        "onnxruntime_version": ort.__version__,
    }
