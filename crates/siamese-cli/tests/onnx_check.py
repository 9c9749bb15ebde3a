"""Checks an ONNX file written by `siamese export` with the real consumers: onnx's checker
(full_check) and onnxruntime, against the embeddings `siamese embed --images` wrote.

Usage: onnx_check.py MODEL.onnx EMBEDDINGS.safetensors N BATCH

Runs the first N images of the embeddings file through onnxruntime, BATCH at a time (the
last batch smaller when BATCH does not divide N), and prints one JSON line: the largest
absolute difference from the file's embeddings, the metadata properties and the output
shape. Exits non-zero when the checker refuses the model.
"""

import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_safetensors(path):
    """The tensors of a safetensors file, as numpy arrays (no safetensors package)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    dtypes = {"F32": np.float32, "U8": np.uint8, "U32": np.uint32}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def main():
    model_path, embeddings_path, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    onnx.checker.check_model(model_path, full_check=True)
    model = onnx.load(model_path)
    metadata = {p.key: p.value for p in model.metadata_props}

    tensors = read_safetensors(embeddings_path)
    images = tensors["images"][:n]
    expected = tensors["embeddings"][:n]
    # The model's input: [N, 1, H, W] float32, bytes / 255 (as its doc string says).
    inputs = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (input_meta,) = session.get_inputs()
    (output_meta,) = session.get_outputs()
    outputs = [
        session.run(None, {input_meta.name: inputs[i : i + batch]})[0]
        for i in range(0, len(inputs), batch)
    ]
    got = np.concatenate(outputs)
    print(
        json.dumps(
            {
                "images": int(len(inputs)),
                "batch": batch,
                "input": input_meta.name,
                "output": output_meta.name,
                "output_shape": list(got.shape),
                "max_abs_diff": float(np.max(np.abs(got - expected))),
                "metadata": metadata,
                "opset": model.opset_import[0].version,
            }
        )
    )


if __name__ == "__main__":
    main()
