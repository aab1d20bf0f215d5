"""TOFU (fictitious authors): the reader and suite (:mod:`.suite`), its evaluation (:mod:`.evaluate`),
the original release's logs (:mod:`.original_logs`) and the whole protocol at laptop scale with tiny
models (:mod:`.tiny`, ``--model tiny``; its tuned values in ``tiny_tuned.json``)."""
