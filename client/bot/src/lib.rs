//! Satsuma bot: a headless native participant for tests and benchmarks.
