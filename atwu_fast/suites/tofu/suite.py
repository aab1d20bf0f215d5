"""TOFU (hub ``locuslab/TOFU`` or a local directory of the same files).

Training: ``forgetNN`` (forget) and ``retain{100-NN}`` (retain), rows ``{question, answer}``.
Evaluation (open-unlearning's TOFU suite): ``forgetNN_perturbed`` and ``retain_perturbed``
(``question, answer, paraphrased_answer, perturbed_answer[5], paraphrased_question``),
``real_authors_perturbed`` and ``world_facts_perturbed`` (``question, answer, perturbed_answer[3]``)
and ``holdoutNN`` (MIA non-members).
"""

from __future__ import annotations

from ...data.readers import DataError, attach_target_words, load_rows, read_file
from ...eval.judge import load_judge
from ...model.distributed import SINGLE, DistContext
from ..base import BenchmarkData, Column
from ..real import SPAN_COLUMNS, TRAIN_COLUMNS, RealSuite
from .config import TofuConfig
from .evaluate import evaluate_tofu
from .original_logs import check_forget_rows

HUB_ID = "locuslab/TOFU"
FORGET_SPLITS = {"forget01": "01", "forget05": "05", "forget10": "10"}
CONFIGS = (
    "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
    "holdout01", "holdout05", "holdout10",
)
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
OPTION_FIELDS = ("question", "answer", "perturbed_answer")


def retain_split(split: str) -> str:
    return f"retain{100 - int(FORGET_SPLITS[split]):02d}"


def _check(rows: list[dict], fields: tuple[str, ...], config: str) -> list[dict]:
    if not rows:
        raise DataError(f"TOFU config '{config}' is empty")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"TOFU config '{config}' row {i} lacks {', '.join(missing)}")
    return rows


def load_qa_config(source: str, config: str) -> list[dict]:
    """The rows of one TOFU config (any of them: full, retainNN, forgetNN, ...), checked for question/answer."""
    return _check(load_rows(source, config), ("question", "answer"), config)


def load_tofu_sets(source: str = HUB_ID, split: str = "forget10", spans_file: str = "",
                   with_eval: bool = True) -> BenchmarkData:
    if split not in FORGET_SPLITS:
        raise DataError(f"unknown TOFU split '{split}'; choose from {', '.join(FORGET_SPLITS)}")
    nn = FORGET_SPLITS[split]
    forget = load_qa_config(source, split)
    retain = load_qa_config(source, retain_split(split))
    if spans_file:
        forget = attach_target_words(forget, read_file(spans_file), spans_file)
    eval_sets = {}
    if with_eval:
        eval_sets = {
            "forget": _check(load_rows(source, f"{split}_perturbed"), PERTURBED_FIELDS, f"{split}_perturbed"),
            "retain": _check(load_rows(source, "retain_perturbed"), PERTURBED_FIELDS, "retain_perturbed"),
            "real_authors": _check(load_rows(source, "real_authors_perturbed"), OPTION_FIELDS, "real_authors_perturbed"),
            "world_facts": _check(load_rows(source, "world_facts_perturbed"), OPTION_FIELDS, "world_facts_perturbed"),
            "holdout": _check(load_rows(source, f"holdout{nn}"), ("question", "answer"), f"holdout{nn}"),
        }
        if spans_file and len(eval_sets["forget"]) == len(forget):
            eval_sets["forget"] = [{**r, "target_words": f["target_words"]} for r, f in zip(eval_sets["forget"], forget)]
        # the perturbed (wrong) answers of the forget questions: what DPO prefers to the forget answer
        perturbed = {r["question"]: r["perturbed_answer"] for r in eval_sets["forget"]}
        forget = [{**r, "perturbed_answer": perturbed[r["question"]]} if r["question"] in perturbed else r
                  for r in forget]
    return BenchmarkData("tofu", forget, retain, eval_sets, {"source": source, "split": split})


class TofuSuite(RealSuite):
    name, log_name = "tofu", "TOFU"
    sections = {"tofu": TofuConfig}
    columns: list[Column] = [
        ("forget_quality", "FQ", "{:.2e}"), ("model_utility", "MU", "{:.3f}"),
        ("forget_truth_ratio", "forget TR", "{:.3f}"), ("forget_Q_A_Prob", "forget prob", "{:.3f}"),
        ("forget_Q_A_ROUGE", "forget RL", "{:.3f}"), ("retain_Q_A_Prob", "retain prob", "{:.3f}"),
        ("retain_Q_A_ROUGE", "retain RL", "{:.3f}"), ("privleak", "privleak", "{:.2f}"),
        ("extraction_strength", "ES", "{:.3f}"), ("exact_memorization", "EM", "{:.3f}"),
        ("leak_worst", "J_W", "{:.3f}"), ("leak_retain", "J_avg", "{:.3f}"),
        *SPAN_COLUMNS, *TRAIN_COLUMNS]

    def quick_overrides(self) -> dict:
        return {"tofu.generate": False}

    def read(self, with_eval: bool = True) -> BenchmarkData:
        return load_tofu_sets(self.bcfg.data_dir or HUB_ID, self.tofu.split, self.bcfg.spans_file, with_eval)

    @property
    def tofu(self) -> TofuConfig:
        return self.cfg.tofu

    @property
    def retain_logs_file(self) -> str:
        return self.tofu.retain_logs

    def load_eval_data(self) -> None:
        """Also refuses retain logs of other forget rows (count or questions) before any model is loaded:
        forget quality compares the truth ratios of the same rows."""
        super().load_eval_data()
        b, t = self.bcfg, self.tofu
        # a judge that cannot load fails here, before any training
        self.judge = load_judge(t.leak_judge, b.device, b.dtype, b.trust_remote_code) if t.leak else None
        if self.retain_logs is not None:
            forget = self.data.eval_sets["forget"]
            check_forget_rows(self.retain_logs, len(forget), [r["question"] for r in forget])

    def evaluate_logs(self, model, retain, ctx: DistContext = SINGLE) -> dict:
        return evaluate_tofu(model, self.tokenizer, self.fmt, self.data.eval_sets, self.eval_batch_size,
                             self.max_new_tokens, retain_ref=retain, generate_text=self.tofu.generate,
                             leak_rows=self.tofu.leak_rows if self.tofu.leak else None, leak_judge=self.judge,
                             ctx=ctx)
