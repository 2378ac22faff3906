"""When inference-only shortcuts (in-place activations, batch chunking, packed weights) are safe."""
import torch


def fast_inference() -> bool:
    """True when autograd is off and no tracer / exporter / compiler is watching: in-place activations, batch
    chunking and packed weights are then safe and invisible."""
    return not (
        torch.is_grad_enabled()
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )
