//! The designated-committer state machine: ordered room events in, actions out.
