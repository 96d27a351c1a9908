"""What every stage shares: argument checks with errors that name the argument (:mod:`.checks`)
and file input/output that never leaves a half-written file (:mod:`.io`)."""
