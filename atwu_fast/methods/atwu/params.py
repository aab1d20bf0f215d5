"""ATWU's hyper-parameters: the ``atwu`` config section shared by every ATWU variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ...config import check, option
from ..base import LossWeights


@dataclass
class ATWUParams(LossWeights):
    """ATWU (docs/method.md): model loss, scorer objective and alternation schedule. These defaults are
    the method as first specified (method atwu); the default method atwu_logfit fixes the scorer objective
    (lambda_* terms), update_every 1, score_position predictor and pretrain_steps 50."""

    beta: float = option("saturation strength of the forget loss", 5.0)
    saturation: Literal["score", "raw"] = option("forget weight g*p^(beta*g) ('score') or g*p^beta ('raw')", "score")
    score_position: Literal["token", "predictor"] = option(
        "score a token from its own position's hidden state or the predicting position's", "token")
    schedule: Literal["alternating", "joint", "frozen"] = option(
        "alternating SGD steps, joint (one backward), or a frozen scorer", "alternating")
    update_every: int = option("scorer update every n model steps", 5)
    scorer_lr: float = option("scorer SGD learning rate (linear decay to 0)", 0.05)
    scorer_momentum: float = option("scorer SGD momentum", 0.9)
    scorer_weight_decay: float = option("scorer SGD weight decay", 1e-4)
    scorer_max_grad_norm: float = option("scorer gradient-norm clip (0 disables)", 1.0)
    lambda_reward: float = option("weight of the reward term -mean g*[l*exp(-beta_r*g*l)] in the scorer objective", 1.0)
    lambda_contrast: float = option("weight of the contrast term: balanced logistic loss telling forget tokens (1) "
                                "from the micro-batch's retain tokens (0) (not in the original method; 0 disables)", 0.0)
    lambda_fit: float = option("weight of the log-loss fit term: binary cross-entropy between g and the soft label "
                           "sigmoid((log l - mean)/std), mean and std of log l over the batch's forget tokens "
                           "(not in the original method; 0 disables)", 0.0)
    pretrain_steps: int = option("full-batch scorer SGD steps on the target model's forget (and retain) hidden states "
                             "and NLL before unlearning, same objective (0: none)", 0)
    scorer_labels: Literal["model", "target"] = option(
        "whose per-token NLL the scorer objective reads: the model's at each step ('model'), or the target "
        "model's, before unlearning, for the same tokens ('target'; cached once, saves the scorer step's "
        "extra NLL pass)", "model")
    score_from: Literal["model", "target"] = option(
        "the hidden states the model step's scores come from: the model's at each step ('model'), or the target "
        "model's, before unlearning, scored once after pre-training and cached per forget token ('target'; "
        "the scorer is then fixed)", "model")
    score_sharpness: float = option(
        "with score_from 'target': the cached scores are sigma(k*z) for the scorer's logit z (k > 1 sharpens "
        "them towards a 0/1 mask at g = 0.5)", 1.0)
    pretrain_retain_rows: int = option("retain QA pairs in the pre-training batch (contrast term)", 128)
    lambda_entropy: float = option("entropy regulariser weight", 1.0)
    lambda_budget: float = option("per-sequence budget penalty weight", 10.0)
    budget: float = option("target fraction of forget tokens with g > 0.5", 0.2)
    lambda_l2: float = option("L2 penalty on the scorer weight vector", 1.0)
    reward_beta: Optional[float] = option("beta inside the scorer reward l*exp(-beta*g*l) (none: = beta)", None)
    reward_norm: bool = option("divide the scorer reward by its batch mean", False)
    init_score: float = option("initial g of every token (the scorer bias starts at logit(init_score))", 0.5)
    score_mean_target: Optional[float] = option(
        "model step only: rescale the scores to min(1, g*target/mean g), mean over the batch's forget tokens, "
        "so the scorer sets the ranking and not the total forget push (not in the original method; none: off)", None)

    def validate(self) -> None:
        check(self.update_every >= 1, "atwu.update_every must be >= 1")
        check(self.beta > 0, "atwu.beta must be > 0")
        check(0.0 < self.budget < 1.0, "atwu.budget must be in (0, 1)")
        check(0.0 < self.init_score < 1.0, "atwu.init_score must be in (0, 1)")
        check(self.scorer_lr >= 0, "atwu.scorer_lr must be >= 0")
        check(self.pretrain_steps >= 0, "atwu.pretrain_steps must be >= 0")
        check(self.score_sharpness > 0, "atwu.score_sharpness must be > 0")
        check(self.score_sharpness == 1.0 or self.score_from == "target",
              "atwu.score_sharpness applies to cached scores only: set atwu.score_from target")
        check(self.pretrain_retain_rows >= 0, "atwu.pretrain_retain_rows must be >= 0")
        check(self.lambda_reward >= 0 and self.lambda_contrast >= 0, "atwu.lambda_reward/lambda_contrast must be >= 0")
        check(self.lambda_fit >= 0, "atwu.lambda_fit must be >= 0")
        check(self.score_mean_target is None or 0.0 < self.score_mean_target <= 1.0,
               "atwu.score_mean_target must be in (0, 1] or none")
