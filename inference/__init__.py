"""The deployable side: the ONNX ensemble, picture handling, the prediction command and the model server.

Never imports TensorFlow: it needs numpy, onnxruntime and the image libraries,
plus MLServer for the server (the `serve` extra). Installed on its own as
mnist_cnn_progression.inference, the base install (pyproject.toml beside this file).
"""
