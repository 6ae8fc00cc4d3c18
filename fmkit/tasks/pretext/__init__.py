"""Vision pretext tasks: each module registers one task on the shared loop (see fmkit.tasks.BUILTIN)."""
