//! The process backend (placeholder; being written).
