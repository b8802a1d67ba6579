//! Helpers shared by dlock's integration tests and its stress worker.
