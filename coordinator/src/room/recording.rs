//! Host-controlled recording: who may start and stop a recorder, and the one-per-room rule.
//!
//! A host sends `{"type":"record","action":"start"|"stop"}`. The room decides here (no I/O,
//! no clock); the driver runs the recorder process (`crate::recording`) when the room emits
//! [`Output::Recorder`] and reports back with [`Room::recorder_exited`].
//!
//! A run goes through these phases:
//!
//! - `Starting`: the driver was told to start a recorder with a token for `subject`; it has
//!   not joined yet. `stop` kills the process.
//! - `Running`: the recorder joined (a participant with the run's subject and the
//!   `recorder` grant). `stop` makes it leave (close 1000): it finalizes its files and exits.
//! - `Stopping`: its participant left (stopped, removed, timed out); the process has not
//!   exited yet. A new `start` waits for that: never two recorder processes for one room.
//!
//! `Idle` again once the driver reports the process's exit. A recorder that an operator
//! started with a token of their own (not a run) also counts for the one-per-room rule, and
//! `stop` makes it leave too.

use std::time::Duration;

use super::{Output, Room};
use crate::protocol::{LeaveReason, RecordAction, error_code};

/// How long a recorder that was asked to leave may take to finish its files before the
/// driver kills it.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// The subject prefix of the join tokens the coordinator mints for its recorders.
pub const SUBJECT_PREFIX: &str = "satsuma-recorder-";

/// What the driver must do with a room's recorder process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderCommand {
    /// Mint a recorder token for `subject` in this room and start the recorder with it.
    Start {
        /// The run (per room, from 1).
        run: u64,
        /// The token's subject.
        subject: String,
        /// The host that asked.
        by: u64,
    },
    /// End run `run`'s process: at once (`grace` zero: it never joined, it has no files), or
    /// after `grace` if it has not exited by then (it was asked to leave and finalizes).
    Stop {
        /// The run.
        run: u64,
        /// How long it may take to exit on its own.
        grace: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Idle,
    Starting {
        run: u64,
        subject: String,
        by: u64,
    },
    Running {
        run: u64,
        participant: u64,
    },
    Stopping {
        run: u64,
    },
}

/// A room's recording state.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    phase: Phase,
    runs: u64,
}

impl Recording {
    /// The run under way, if any.
    fn run(&self) -> Option<u64> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Starting { run, .. } | Phase::Running { run, .. } | Phase::Stopping { run } => {
                Some(*run)
            }
        }
    }
}

impl Room {
    /// A `record` message from `from`.
    pub(super) fn record(
        &mut self,
        now: std::time::Instant,
        from: u64,
        action: RecordAction,
    ) -> Result<(), (&'static str, String)> {
        if !self.is_host(from) {
            return Err((
                error_code::FORBIDDEN,
                "only a host may start or stop recording".to_owned(),
            ));
        }
        if !self.config.recording {
            return Err((
                error_code::RECORDING_UNAVAILABLE,
                "this server is not set up to record (no recorder configured)".to_owned(),
            ));
        }
        let recorders: Vec<u64> = self
            .participants
            .values()
            .filter(|p| p.recorder)
            .map(|p| p.id)
            .collect();
        match action {
            RecordAction::Start => {
                if self.recording.phase != Phase::Idle || !recorders.is_empty() {
                    return Err((
                        error_code::RECORDING_STATE,
                        "the room is already being recorded (one recorder per room)".to_owned(),
                    ));
                }
                self.recording.runs += 1;
                let run = self.recording.runs;
                let subject = format!("{SUBJECT_PREFIX}{run}");
                self.recording.phase = Phase::Starting {
                    run,
                    subject: subject.clone(),
                    by: from,
                };
                self.outputs
                    .push_back(Output::Recorder(RecorderCommand::Start {
                        run,
                        subject,
                        by: from,
                    }));
                Ok(())
            }
            RecordAction::Stop => {
                let starting = match &self.recording.phase {
                    Phase::Starting { run, .. } => Some(*run),
                    _ => None,
                };
                if let Some(run) = starting {
                    // It has not joined: nothing is recorded yet, end the process at once.
                    self.recording.phase = Phase::Stopping { run };
                    self.outputs
                        .push_back(Output::Recorder(RecorderCommand::Stop {
                            run,
                            grace: Duration::ZERO,
                        }));
                    return Ok(());
                }
                if recorders.is_empty() {
                    return Err((
                        error_code::RECORDING_STATE,
                        "the room is not being recorded".to_owned(),
                    ));
                }
                self.stop_recorders(now, recorders);
                Ok(())
            }
        }
    }

    /// Every recorder in `recorders` leaves (close 1000: it finalizes its files); the run's
    /// process gets the grace to exit on its own.
    fn stop_recorders(&mut self, now: std::time::Instant, recorders: Vec<u64>) {
        for id in recorders {
            self.remove_participant(now, id, LeaveReason::Left);
        }
        if let Some(run) = self.recording.run() {
            self.outputs
                .push_back(Output::Recorder(RecorderCommand::Stop {
                    run,
                    grace: STOP_GRACE,
                }));
        }
    }

    /// After a departure: a recording the coordinator runs ends when nobody but recorders is
    /// left in the room (it would record an empty call until its time limit).
    pub(super) fn stop_recording_if_alone(&mut self, now: std::time::Instant) {
        let starting = match &self.recording.phase {
            Phase::Starting { run, .. } => Some(*run),
            Phase::Running { .. } => None,
            Phase::Idle | Phase::Stopping { .. } => return,
        };
        if self.participants.values().any(|p| !p.recorder) {
            return;
        }
        if let Some(run) = starting {
            self.recording.phase = Phase::Stopping { run };
            self.outputs
                .push_back(Output::Recorder(RecorderCommand::Stop {
                    run,
                    grace: Duration::ZERO,
                }));
            return;
        }
        let recorders = self.participants.values().map(|p| p.id).collect();
        self.stop_recorders(now, recorders);
    }

    /// A participant joined: the recorder of the run that is starting, if it is that one.
    pub(super) fn recorder_joined(&mut self, id: u64, subject: &str, recorder: bool) {
        if let Phase::Starting {
            run, subject: s, ..
        } = &self.recording.phase
            && recorder
            && s == subject
        {
            self.recording.phase = Phase::Running {
                run: *run,
                participant: id,
            };
        }
    }

    /// A participant left: the run's recorder, if it is that one (its process exits next).
    pub(super) fn recorder_left(&mut self, id: u64) {
        if let Phase::Running { run, participant } = self.recording.phase
            && participant == id
        {
            self.recording.phase = Phase::Stopping { run };
        }
    }

    /// The driver: run `run`'s recorder process ended (or never started: `detail` says
    /// why). A recorder that never joined is reported to the host that started it
    /// (`recording_failed`); one still in the room leaves.
    pub fn recorder_exited(&mut self, now: std::time::Instant, run: u64, detail: &str) {
        self.now = Some(now);
        if self.recording.run() != Some(run) {
            return;
        }
        match std::mem::take(&mut self.recording.phase) {
            Phase::Starting { by, .. } => {
                if self.participants.contains_key(&by) {
                    self.error(
                        by,
                        error_code::RECORDING_FAILED,
                        format!("the recorder did not join: {detail}"),
                        Some("record"),
                    );
                }
            }
            Phase::Running { participant, .. } => {
                self.remove_participant(now, participant, LeaveReason::Left);
            }
            Phase::Stopping { .. } | Phase::Idle => {}
        }
    }

    /// Whether a recorder run is under way (starting, recording or stopping).
    pub fn recording_run(&self) -> Option<u64> {
        self.recording.run()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Instant;

    use super::*;
    use crate::protocol::{ClientMessage, Permissions, ServerMessage};
    use crate::room::{Input, JoinRequest, RoomConfig};

    fn room(recording: bool) -> Room {
        Room::new(
            "r",
            RoomConfig {
                recording,
                ..RoomConfig::default()
            },
            1,
        )
    }

    fn join(room: &mut Room, subject: &str, host: bool, recorder: bool) -> u64 {
        room.join(
            Instant::now(),
            JoinRequest {
                subject: subject.to_owned(),
                name: subject.to_owned(),
                permissions: Permissions {
                    publish: !recorder,
                    subscribe: true,
                    host,
                },
                resume_token: format!("rt-{subject}"),
                wall_ms: 0,
                visible_only_to: None,
                recorder,
            },
        )
        .unwrap()
    }

    fn record(room: &mut Room, from: u64, action: RecordAction) {
        room.handle(
            Instant::now(),
            from,
            Input::Message(ClientMessage::Record { action }),
        );
    }

    /// Drains the outputs: the recorder commands, and the error codes sent to `to`.
    fn drain(room: &mut Room, to: u64) -> (Vec<RecorderCommand>, Vec<String>) {
        let mut cmds = Vec::new();
        let mut errors = Vec::new();
        while let Some(o) = room.poll_output() {
            match o {
                Output::Recorder(c) => cmds.push(c),
                Output::Reply {
                    to: t,
                    msg: ServerMessage::Error { code, .. },
                } if t == to => errors.push(code),
                _ => {}
            }
        }
        (cmds, errors)
    }

    #[test]
    fn only_hosts_start_and_only_when_configured() {
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        let guest = join(&mut r, "bob", false, false);
        drain(&mut r, 0);
        record(&mut r, guest, RecordAction::Start);
        let (cmds, errors) = drain(&mut r, guest);
        assert!(cmds.is_empty());
        assert_eq!(errors, vec![error_code::FORBIDDEN]);
        record(&mut r, guest, RecordAction::Stop);
        assert_eq!(drain(&mut r, guest).1, vec![error_code::FORBIDDEN]);
        assert_eq!(r.recording_run(), None);

        let mut off = room(false);
        let h = join(&mut off, "alice", false, false);
        drain(&mut off, 0);
        record(&mut off, h, RecordAction::Start);
        let (cmds, errors) = drain(&mut off, h);
        assert!(cmds.is_empty());
        assert_eq!(errors, vec![error_code::RECORDING_UNAVAILABLE]);

        record(&mut r, host, RecordAction::Start);
        let (cmds, errors) = drain(&mut r, host);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            cmds,
            vec![RecorderCommand::Start {
                run: 1,
                subject: format!("{SUBJECT_PREFIX}1"),
                by: host
            }]
        );
    }

    #[test]
    fn one_recorder_per_room_through_start_run_stop_and_exit() {
        let t = Instant::now();
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        // Starting: a second start is refused.
        record(&mut r, host, RecordAction::Start);
        let (cmds, errors) = drain(&mut r, host);
        assert!(cmds.is_empty());
        assert_eq!(errors, vec![error_code::RECORDING_STATE]);
        // The recorder joins with the run's subject: running.
        let rec = join(&mut r, &format!("{SUBJECT_PREFIX}1"), false, true);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        assert_eq!(drain(&mut r, host).1, vec![error_code::RECORDING_STATE]);
        // Stop: the recorder leaves (close 1000) and the process gets its grace.
        record(&mut r, host, RecordAction::Stop);
        let mut gone = None;
        let mut cmds = Vec::new();
        while let Some(o) = r.poll_output() {
            match o {
                Output::Gone { id, code, .. } => gone = Some((id, code)),
                Output::Recorder(c) => cmds.push(c),
                _ => {}
            }
        }
        assert_eq!(gone, Some((rec, crate::protocol::close::NORMAL)));
        assert_eq!(
            cmds,
            vec![RecorderCommand::Stop {
                run: 1,
                grace: STOP_GRACE
            }]
        );
        assert!(!r.contains(rec));
        // Until the process has exited, no new one starts.
        record(&mut r, host, RecordAction::Start);
        assert_eq!(drain(&mut r, host).1, vec![error_code::RECORDING_STATE]);
        // An exit report for another run changes nothing.
        r.recorder_exited(t, 7, "exit status 0");
        assert_eq!(r.recording_run(), Some(1));
        r.recorder_exited(t, 1, "exit status 0");
        assert_eq!(r.recording_run(), None);
        assert!(drain(&mut r, host).1.is_empty());
        // Nothing to stop now.
        record(&mut r, host, RecordAction::Stop);
        assert_eq!(drain(&mut r, host).1, vec![error_code::RECORDING_STATE]);
        // A new run has a new subject.
        record(&mut r, host, RecordAction::Start);
        let (cmds, _) = drain(&mut r, host);
        assert!(
            matches!(&cmds[..], [RecorderCommand::Start { run: 2, subject, .. }] if subject.ends_with('2'))
        );
    }

    #[test]
    fn a_recorder_that_dies_leaves_and_one_that_never_joined_is_reported() {
        let t = Instant::now();
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        // A participant with the subject but without the grant is not the recorder.
        let fake = join(&mut r, &format!("{SUBJECT_PREFIX}1"), false, false);
        drain(&mut r, 0);
        r.recorder_exited(t, 1, "exit status 1");
        let (cmds, errors) = drain(&mut r, host);
        assert!(cmds.is_empty());
        assert_eq!(errors, vec![error_code::RECORDING_FAILED]);
        assert!(r.contains(fake), "an exit removes only the run's recorder");
        assert_eq!(r.recording_run(), None);

        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        let rec = join(&mut r, &format!("{SUBJECT_PREFIX}2"), false, true);
        drain(&mut r, 0);
        // The process dies while recording: its participant leaves at once.
        r.recorder_exited(t, 2, "killed by signal 9");
        let mut gone = None;
        while let Some(o) = r.poll_output() {
            if let Output::Gone { id, .. } = o {
                gone = Some(id);
            }
        }
        assert_eq!(gone, Some(rec));
        assert_eq!(r.recording_run(), None);
    }

    #[test]
    fn a_recording_ends_when_only_recorders_are_left() {
        let t = Instant::now();
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        let guest = join(&mut r, "bob", false, false);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        let rec = join(&mut r, &format!("{SUBJECT_PREFIX}1"), false, true);
        drain(&mut r, 0);
        r.handle(t, host, Input::Message(ClientMessage::Leave {}));
        let (cmds, _) = drain(&mut r, 0);
        assert!(cmds.is_empty(), "bob is still there: {cmds:?}");
        assert!(r.contains(rec));
        r.handle(t, guest, Input::Message(ClientMessage::Leave {}));
        let (cmds, _) = drain(&mut r, 0);
        assert_eq!(
            cmds,
            vec![RecorderCommand::Stop {
                run: 1,
                grace: STOP_GRACE
            }]
        );
        assert!(r.is_empty(), "the recorder left too");

        // Still starting when the last person leaves: the process ends at once.
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        r.handle(t, host, Input::Message(ClientMessage::Leave {}));
        let (cmds, _) = drain(&mut r, 0);
        assert_eq!(
            cmds,
            vec![RecorderCommand::Stop {
                run: 1,
                grace: Duration::ZERO
            }]
        );
    }

    #[test]
    fn stop_while_starting_kills_at_once_and_operator_recorders_count() {
        let t = Instant::now();
        let mut r = room(true);
        let host = join(&mut r, "alice", false, false);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        drain(&mut r, host);
        record(&mut r, host, RecordAction::Stop);
        assert_eq!(
            drain(&mut r, host).0,
            vec![RecorderCommand::Stop {
                run: 1,
                grace: Duration::ZERO
            }]
        );
        // Killed before it joined after a stop: no failure report.
        r.recorder_exited(t, 1, "killed by signal 9");
        let (_, errors) = drain(&mut r, host);
        assert!(errors.is_empty(), "{errors:?}");
        // A recorder an operator started with its own token: one per room, and stop
        // makes it leave (no process of ours to end).
        let op = join(&mut r, "board-minutes", false, true);
        drain(&mut r, 0);
        record(&mut r, host, RecordAction::Start);
        assert_eq!(drain(&mut r, host).1, vec![error_code::RECORDING_STATE]);
        record(&mut r, host, RecordAction::Stop);
        let (cmds, errors) = drain(&mut r, host);
        assert!(cmds.is_empty() && errors.is_empty());
        assert!(!r.contains(op));
    }
}
