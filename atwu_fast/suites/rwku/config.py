"""The ``rwku`` section: the options only RWKU has (``--rwku.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import check, option


@dataclass
class RwkuConfig:
    """RWKU only: which targets, which forget corpus, which ROUGE-L."""

    targets: int = option("unlearn the first K targets jointly (batch setting)", 1)
    corpus: str = option("forget corpus config (train_positive_llama3, train_positive_phi3, ...)",
                         "train_positive_llama3")
    rouge: Literal["rwku", "rouge_score"] = option(
        "ROUGE-L recall: rwku (RWKU's own scorer, the rouge package: words split on spaces, case and punctuation "
        "kept, distinct words once) or rouge_score (lowercased, punctuation dropped; not comparable with RWKU's "
        "tables)", "rwku")

    def validate(self) -> None:
        check(self.targets >= 1, "rwku.targets must be >= 1")
