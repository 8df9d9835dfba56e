"""Serving: signatures and decoder (the leaf), the SavedModel, TFLite and ONNX converters, the export layout,
predictors, the agreement check, and the export orchestration on top."""
