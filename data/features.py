"""The names of the model inputs the tokenizer produces, in the order every model,
converter and runtime uses them. Kept free of TensorFlow so light modules (the runtime
adapter, the REST server's request checks) can import it."""

INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")
