"""Measures a built DCASE 2025 submission as the challenge's ``test_complexity.py`` does, without
this repository: run by ``l2bn package`` in a fresh interpreter with the package's folder on the
path and l2bn-lit's own packages (and Lightning) made unimportable.

    python check_submission.py PACKAGE_FOLDER NAME INDEX DEVICE_ID [...]

For each device id: ``load_model()``, ``load_inputs`` on the package's ``resources/dummy.wav``,
``get_model_for_device``, torchinfo's ``total_mult_adds`` for that input shape on a float32 copy of
the network, the parameters' bytes at their dtype, and the predicted class of the dummy clip.
Prints one JSON object.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys

for blocked in ("l2bn_lit", "models", "datamodules", "lightning", "pytorch_lightning", "lightning_fabric"):
    sys.modules[blocked] = None  # type: ignore[assignment]  # importing it now raises ImportError


def main(folder: str, name: str, index: str, device_ids: list[str]) -> dict:
    sys.path.insert(0, folder)
    from importlib import resources

    import torchinfo

    api = importlib.import_module(f"{name}.{name}_{index}")
    model = api.load_model()
    dummy = str(resources.files(f"{name}.resources") / "dummy.wav")
    inputs = api.load_inputs([dummy] * len(device_ids), device_ids, model)
    logits, class_order = api.predict([dummy] * len(device_ids), device_ids, use_cuda=False)
    report = {}
    for device_id, features, scores in zip(device_ids, inputs, logits):
        network = api.get_model_for_device(model, device_id)
        macs = torchinfo.summary(
            copy.deepcopy(network).float(), input_size=tuple(features.shape), verbose=0
        ).total_mult_adds
        report[device_id] = {
            "MACs": int(macs),
            "Params": sum(p.numel() * p.element_size() for p in network.parameters()),
            "input_shape": list(features.shape),
            "dummy_prediction": class_order[int(scores.argmax())],
        }
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])))
