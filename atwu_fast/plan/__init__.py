"""``python -m atwu_fast.plan``: predict the peak GPU memory of an unlearning step before a run
(:mod:`.planner`; model configs to plan without a download in ``configs/``)."""
