"""Assets: paths, checksums, fetching the embedded models/data, model loading, ONNX conversion."""
