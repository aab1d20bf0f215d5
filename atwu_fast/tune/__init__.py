"""``python -m atwu_fast.tune``: search a method's hyper-parameters with Optuna's TPE sampler on tuning
seeds, then re-evaluate the best setting on fresh seeds (:mod:`.study`, :mod:`.report`)."""
