"""The operator service (``avs-operator``). Lives under ``operator/`` as ``avs_operator`` because
a top-level package named ``operator`` would shadow Python's standard library."""
