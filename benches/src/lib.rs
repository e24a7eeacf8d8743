//! Satsuma benchmarks and load harness.
