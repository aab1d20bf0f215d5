"""Label and span-kind codes shared by encoding, training, evaluation and the report.

``labels`` hold the token id on answer tokens and :data:`IGNORE_INDEX` elsewhere (prompt, padding,
the first token of a packed row). ``span_kind`` marks each token: :data:`NOT_ANSWER` off the answer,
else :data:`OUTSIDE` any fact span, :data:`POOLED` (a fact value retain authors share) or
:data:`UNIQUE` (an author-unique fact value, or a benchmark's target word).
"""

IGNORE_INDEX = -100

NOT_ANSWER, OUTSIDE, POOLED, UNIQUE = -1, 0, 1, 2
KIND_CODE = {"pooled": POOLED, "unique": UNIQUE}  # span "kind" strings of the embedded benchmark's rows

# how the report names the kinds: the embedded benchmark's fact spans, a real benchmark's target words
FACT_KIND_NAMES = {UNIQUE: "author-unique fact", POOLED: "pooled fact", OUTSIDE: "other"}
TARGET_KIND_NAMES = {UNIQUE: "target word", OUTSIDE: "other"}


def answer_label_count(labels) -> int:
    """Labels a causal LM predicts (positions 1.., since position 0 is never predicted) that are not ignored."""
    return sum(1 for label in list(labels)[1:] if label != IGNORE_INDEX)
