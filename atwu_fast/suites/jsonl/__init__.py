"""Your own forget / retain rows as JSON Lines: the reader and suite (:mod:`.suite`), its evaluation
(:mod:`.evaluate`, TOFU's per-row scores without the benchmark-specific sets)."""
