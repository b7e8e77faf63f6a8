"""Models and tensors shared by the wire-compatibility tests (tritonclient HTTP/gRPC, binary REST)."""

from __future__ import annotations

import numpy as np

#: Echoes every input ``x`` back as output ``out_x`` (no declared signature: any datatype goes).
ECHO = '''
    class Model:
        def load(self):
            pass

        def predict(self, inputs):
            return {"out_" + name: value for name, value in inputs.items()}
'''

#: Two declared inputs and two declared outputs.
PAIR = '''
    import numpy as np

    class Model:
        inputs = [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                  {"name": "b", "datatype": "INT32", "shape": [-1, 2]}]
        outputs = [{"name": "sum", "datatype": "FP32", "shape": [-1, 2]},
                   {"name": "product", "datatype": "FP32", "shape": [-1, 2]}]

        def load(self):
            pass

        def predict(self, inputs):
            a, b = inputs["a"], inputs["b"].astype(np.float32)
            return {"sum": (a + b).astype(np.float32), "product": (a * b).astype(np.float32)}
'''

#: One array per V2 datatype (except BF16, which needs ml_dtypes), with each type's extremes.
ARRAYS = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 255, 7]], np.uint8),
    "UINT16": np.array([[0, 65535, 7]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7]], np.uint64),
    "INT8": np.array([[-128, 127, 0]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1, 0]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504]], np.float16),
    "FP32": np.array([[0.1, -1e30, 3.5]], np.float32),
    "FP64": np.array([[0.1, -1e300, 3.5]], np.float64),
    "BYTES": np.array([[b"abc", b"", b"\x00\xff binary"]], dtype=object),
}
