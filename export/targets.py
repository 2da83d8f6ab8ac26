"""The export targets: one name per deliverable, used by the quantize and export stages,
the report and the server."""

EXPORT_TARGETS = ("savedmodel", "cpu", "gpu", "int8", "qat", "pruned-qat", "text")
