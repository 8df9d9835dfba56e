"""Serving: signatures, decoder and confidence record (the leaf), the SavedModel, TFLite (with its metadata) and ONNX
converters, the export layout, predictors, the agreement check, model cards, and the export orchestration on top."""
