"""The applications built on the library: the ``medtrim`` command (:mod:`.cli`), the MedTrim vs
InfoNCE demo (:mod:`.demo`), the mining demo (:mod:`.mining_demo`) and ``python -m
medtrim_ext.train`` (:mod:`.train`)."""
