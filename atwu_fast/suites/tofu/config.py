"""The ``tofu`` section: the options only TOFU has (``--tofu.*``; shared real-benchmark options are in
``benchmark``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check, option


@dataclass
class TofuConfig:
    """TOFU only: the forget split, generations and the leak metrics, the retain model's logs."""

    split: str = option("the forget split to unlearn (forget01, forget05, forget10); python -m atwu_fast.finetune: "
                        "the config to fine-tune on (full, retain90, ...)", "forget10")
    generate: bool = option("greedy generations for ROUGE-L (false: a faster evaluation whose model utility is the "
                            "harmonic mean of the 6 probability and truth-ratio values)", True)
    leak: bool = option("with generate and target words: the leak metrics (leak_worst J_W, leak_paraphrase, "
                        "leak_icr, leak_retain J_avg; docs/benchmarks.md)", True)
    leak_rows: int = option("forget rows probed for the leak metrics (0: all)", 100)
    leak_judge: str = option("a local causal LM (directory or hub id) that judges leaks instead of target-word "
                             "matching: it answers whether each answer states the facts, in any wording (default: "
                             "exact target-word match)", "")
    retain_logs: str = option(
        "retain model's logs: open-unlearning's TOFU_EVAL.json (or its folder) or the original TOFU release's "
        "eval_log_aggregated.json / eval_log_forget.json (or their folder): forget quality (and privleak from "
        "TOFU_EVAL.json); logs of other forget rows are refused", "")

    def validate(self) -> None:
        check(self.leak_rows >= 0, "tofu.leak_rows must be >= 0")
