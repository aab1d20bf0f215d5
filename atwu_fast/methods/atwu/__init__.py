"""ATWU: token-weighted unlearning with a learned scorer (``docs/method.md``), its variants and controls.

Every variant reads the ``atwu`` config section; each fixes the fields below on top of it (a value of
a fixed field set by the user is overridden for that variant, with a note on stderr).
"""

from __future__ import annotations

from ...config.search import Float
from ..base import Method
from .hooks import ScorerHooks
from .loss import atwu_loss, atwu_oracle_facts_loss, atwu_oracle_loss
from .params import ATWUParams

# The method as first specified: the scorer objective of reward, entropy, budget and L2 terms
# (schedule options free).
FAITHFUL = {"lambda_reward": 1.0, "lambda_contrast": 0.0, "lambda_fit": 0.0}
# The scorer-study variant (docs/studies/scorer_study.md): non-saturating reward r = ℓ (β_r = 0) divided by
# its batch mean, a scorer step every model step, the predictor position, 50 pre-training steps.
NLL_TRACKING = {"lambda_reward": 1.0, "lambda_contrast": 0.0, "lambda_fit": 0.0, "reward_beta": 0.0,
                "reward_norm": True, "update_every": 1, "score_position": "predictor", "pretrain_steps": 50}
# The log-loss fit variant (docs/studies/scorer_study.md, "Log-loss fit"): the scorer is fitted to the soft
# label σ(standardised log ℓ) by cross-entropy instead of the reward; no entropy or budget term,
# a light L2 (0.01); schedule as atwu_nll.
LOG_FIT = {"lambda_reward": 0.0, "lambda_contrast": 0.0, "lambda_fit": 1.0, "lambda_entropy": 0.0,
           "lambda_budget": 0.0, "lambda_l2": 0.01, "update_every": 1, "score_position": "predictor",
           "pretrain_steps": 50}
FROZEN = {"schedule": "frozen", "pretrain_steps": 0}  # g ≡ init_score (0.5) throughout


def _variant(name: str, fixed: dict) -> Method:
    search = {"beta": Float(1.0, 10.0, log=True)}
    if fixed.get("schedule") != "frozen":
        search["scorer_lr"] = Float(0.005, 0.5, log=True)
    return Method(name, ATWUParams, atwu_loss, section="atwu", fixed=fixed, hooks=ScorerHooks, weight_hooks="learned",
                  pluggable=True, search=search,
                  doc="−(1/N_F) Σ g·[p^(βg)]_sg·ℓ + α·retain NLL, g = σ(wᵀh + b) learned (Yüce et al. 2026; "
                      "docs/method.md)")


ATWU = _variant("atwu", {})
ATWU_FAITHFUL = _variant("atwu_faithful", FAITHFUL)
ATWU_NLL = _variant("atwu_nll", NLL_TRACKING)
ATWU_LOGFIT = _variant("atwu_logfit", LOG_FIT)
ATWU_FROZEN = _variant("atwu_frozen", FROZEN)
ATWU_ORACLE = Method("atwu_oracle", ATWUParams, atwu_oracle_loss, section="atwu", needs_spans=True,
                     search={"beta": Float(1.0, 10.0, log=True)},
                     doc="the saturated loss with g = 1 on ground-truth author-unique tokens (control)")
ATWU_ORACLE_FACTS = Method("atwu_oracle_facts", ATWUParams, atwu_oracle_facts_loss, section="atwu", needs_spans=True,
                           search={"beta": Float(1.0, 10.0, log=True)},
                           doc="the saturated loss with g = 1 on every ground-truth fact token (control)")
VARIANTS = (ATWU, ATWU_FAITHFUL, ATWU_NLL, ATWU_LOGFIT, ATWU_FROZEN, ATWU_ORACLE, ATWU_ORACLE_FACTS)
