"""RWKU (real-world knowledge unlearning): the reader and suite (:mod:`.suite`), its evaluation
(:mod:`.evaluate`)."""
