"""Models with L2BN export with torch.export (eval and training mode) and to ONNX and match eager."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from l2bn_lit import L2BN2d
from models import AudioSceneClassifier, ImageClassifier


def _models():
    torch.manual_seed(0)
    image = ImageClassifier(num_classes=10, input_shape=[3, 32, 32], arch="resnet20")
    audio = AudioSceneClassifier(
        num_classes=5, input_shape=[16000], sample_rate=16000, frontend={"n_fft": 512, "hop_length": 256, "n_mels": 64}
    )
    for model in (image, audio):  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, L2BN2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.01, 0.01)
                    m.running_var.uniform_(1e-5, 2e-5)
    return [("image", image.eval(), torch.randn(2, 3, 32, 32)), ("audio", audio.eval(), torch.randn(2, 16000))]


@pytest.mark.parametrize("name,model,x", _models(), ids=["image", "audio"])
def test_torch_export_matches_eager(name, model, x):
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name,model,x", _models(), ids=["image", "audio"])
def test_onnx_export_matches_eager(name, model, x, tmp_path):
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(str(path))
    session = onnxruntime.InferenceSession(str(path))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_training_mode_torch_export_of_a_converted_resnet_runs_forward_and_backward():
    """A torchvision ResNet converted to L2BN, exported in training mode: the exported program gives eager's
    outputs, gradients and running statistics (torch.export traces the layer as standard ops)."""
    import copy

    import torchvision

    from l2bn_lit import convert_norm

    torch.manual_seed(0)
    model = convert_norm(torchvision.models.resnet18(num_classes=10), "l2bn").train()
    eager, reference = copy.deepcopy(model), copy.deepcopy(model).double()
    x = torch.randn(4, 3, 32, 32)
    exported = torch.export.export(model, (x,)).module()
    out, ref = exported(x), eager(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for output in (out, ref, reference(x.double())):
        output.square().mean().backward()
    exported_params, eager_params = dict(exported.named_parameters()), dict(eager.named_parameters())
    for name, param in reference.named_parameters():  # the same math, other float32 rounding (composite vs analytic)
        for path, params in (("exported", exported_params), ("eager", eager_params)):
            error = (params[name].grad.double() - param.grad).abs().max() / param.grad.abs().max()
            assert error < 2e-4, f"{path} {name}: relative gradient error {error:.1e} against float64"
    buffers = dict(exported.named_buffers())
    torch.testing.assert_close(buffers["bn1.running_mean"], eager.bn1.running_mean, rtol=1e-4, atol=1e-6)
