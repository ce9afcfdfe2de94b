"""The generated PyTorch module of a hivemesh export, run on a test split (needs torch).

    python check_torch_module.py EXPORT_DIR X_TEST.npy Y_TEST.npy EXPECTED_CORRECT

Imports EXPORT_DIR/model.py, loads EXPORT_DIR/weights.safetensors with its load() helper, runs
X_TEST through the model in float32 and counts the predictions (argmax of the logits) equal to
Y_TEST. Prints the count and how far it is from EXPECTED_CORRECT (hivemesh's count); exits 0
when they are equal, 1 otherwise. Not run by CI (torch is large); see BENCHMARKS.md.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    folder, expected = Path(sys.argv[1]), int(sys.argv[4])
    spec = importlib.util.spec_from_file_location("hivemesh_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.load(str(folder / "weights.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    x = torch.from_numpy(np.load(sys.argv[2]))
    y = torch.from_numpy(np.load(sys.argv[3]))
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), 1000):
            logits = model(x[start : start + 1000])
            correct += int((logits.argmax(dim=1) == y[start : start + 1000]).sum())
    print(
        f"{folder}: torch {torch.__version__}: {correct} of {len(x)} correct, hivemesh {expected}"
        f" (difference {correct - expected}); {params} parameters (PARAMS {module.PARAMS})"
    )
    sys.exit(0 if correct == expected and params == module.PARAMS else 1)


if __name__ == "__main__":
    main()
