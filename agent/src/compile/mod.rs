//! Pure compilation of a `State` into an `Image`: all NetworkPolicy semantics live here.
