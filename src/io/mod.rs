//! Checkpoint I/O.
