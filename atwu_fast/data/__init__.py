"""From rows to batches: label and span codes, prompt formatting (plain or chat template),
padding and packing, file readers and atomic writes. Knows nothing about any one benchmark."""
