//! The recording session: join as a visible member, pull every track, decrypt, write.
//!
//! 1. Join the room through the coordinator's WebSocket with a token that grants
//!    `recorder` ([`RoomMember`]): every member's roster marks this participant as a
//!    recorder, and it becomes an MLS member of the room's group like any other (it gets
//!    the keys only through the group, so every member's verified roster lists it).
//! 2. Wait for the keys (the member is in the group), then open an SFU session through the
//!    coordinator's proxy (`/sfu`, bearer = the resume token) and pull every track the room
//!    announces, again whenever one is published.
//! 3. For each pulled track: RTP → frames ([`crate::vp8::Assembler`] for VP8; one Opus
//!    packet is one frame) → decrypt with the keys of the participant that owns the
//!    publishing session → [`TrackFile`] (WebM). Video waits for a keyframe (PLI every
//!    second until one arrives).
//! 4. At the end (duration reached, stop signal, or the member was removed or lost),
//!    finalize the files, write `manifest.json` and leave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use satsuma_bot::participant::TappedRtp;
use satsuma_bot::room::RoomMember;
use satsuma_bot::{Bot, BotConfig};
use satsuma_wire::room::{TrackKind, close};
use serde::Serialize;
use tracing::{info, warn};

use crate::clock::Timeline;
use crate::track::{Codec, TrackFile};
use crate::vp8;

/// What to record and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:8080`.
    pub coordinator: String,
    /// The room.
    pub room: String,
    /// A join token for the room that grants `recorder` (and `subscribe`).
    pub token: String,
    /// The display name (what the token says is shown; this names the MLS credential).
    pub name: String,
    /// Directory for the files (created if missing).
    pub out: PathBuf,
    /// Stop after this long from the start of the recording (`None`: until stopped).
    pub duration: Option<Duration>,
    /// How long to wait for the group's keys after joining.
    pub join_timeout: Duration,
}

/// One safety number seen during the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetySeen {
    /// The MLS epoch.
    pub epoch: u64,
    /// Its safety number (every member of that epoch shows the same one).
    pub safety_number: String,
    /// When it was first seen (Unix ms).
    pub seen_at_ms: u64,
}

/// A participant seen during the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantSeen {
    /// Participant id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Host?
    pub host: bool,
    /// A recorder?
    pub recorder: bool,
}

/// One recorded track.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackEntry {
    /// The WebM file, relative to the output directory (`null` if nothing decodable came).
    pub file: Option<String>,
    /// Publisher's participant id.
    pub participant_id: u64,
    /// Publisher's display name.
    pub participant_name: String,
    /// SFU session.
    pub session_id: String,
    /// Track name.
    pub track_name: String,
    /// `audio`, `video` or `screenshare`.
    pub kind: String,
    /// `VP8` or `Opus`.
    pub codec: String,
    /// Frames written.
    pub frames: u64,
    /// VP8 keyframes written.
    pub keyframes: u64,
    /// Frames that did not decrypt (no key, failed authentication, replay).
    pub decrypt_failures: u64,
    /// Frames given up in reassembly (a packet missing).
    pub lost_frames: u64,
    /// Video frames dropped before the first keyframe.
    pub before_keyframe: u64,
    /// The first frame's time, ms from the recording's start.
    pub first_frame_ms: Option<u64>,
    /// The last frame's time, ms from the recording's start.
    pub last_frame_ms: Option<u64>,
    /// Video size of the first keyframe.
    pub width: Option<u32>,
    /// Video size of the first keyframe.
    pub height: Option<u32>,
    /// Keyframe requests sent.
    pub keyframe_requests: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// The room.
    pub room: String,
    /// The recorder's participant id.
    pub recorder_id: u64,
    /// The recorder's name.
    pub recorder_name: String,
    /// Start of the recording (the recorder holds the group's keys), Unix ms.
    pub started_at_ms: u64,
    /// End of the recording, Unix ms.
    pub ended_at_ms: u64,
    /// Why it ended.
    pub ended_because: String,
    /// Everyone seen in the room meanwhile.
    pub participants: Vec<ParticipantSeen>,
    /// The tracks.
    pub tracks: Vec<TrackEntry>,
    /// The safety numbers of the epochs the recorder was in.
    pub safety_numbers: Vec<SafetySeen>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A pulled track being recorded.
struct Recording {
    entry: TrackEntry,
    codec: Codec,
    file: TrackFile,
    assembler: vp8::Assembler,
    /// The track's frames on the recording's timeline.
    timeline: Timeline,
    /// Unwrapping audio timestamps: the last raw one and its extended value.
    audio_ts: Option<(u32, i64)>,
    last_pli: Option<Instant>,
}

impl Recording {
    fn write(&mut self, frames: Vec<(u64, Vec<u8>)>) {
        for (ns, frame) in frames {
            if let Err(e) = self.file.write(&frame, ns) {
                warn!("{e}");
            }
        }
    }

    fn audio_ext(&mut self, ts: u32) -> i64 {
        let ext = match self.audio_ts {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw).cast_signed()),
        };
        self.audio_ts = Some((ts, ext));
        ext
    }
}

/// Errors that end a recording before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Joining failed.
    #[error("joining the room: {0}")]
    Join(#[from] satsuma_bot::room::RoomError),
    /// The group's keys did not arrive.
    #[error("no MLS membership within {0:?} (phase {1:?})")]
    NoKeys(Duration, String),
    /// The SFU session could not be opened.
    #[error("SFU session: {0}")]
    Bot(#[from] satsuma_bot::BotError),
    /// The room does not show this participant as a recorder (the token lacks the
    /// `recorder` grant): recording unannounced is refused.
    #[error(
        "the room does not mark this participant as a recorder: use a token that grants \
         `recorder` (e.g. `satsuma token create --recorder`)"
    )]
    NotRecorder,
    /// The output directory.
    #[error("output directory {0}: {1}")]
    Out(PathBuf, std::io::Error),
}

fn ws_url(coordinator: &str, room: &str) -> String {
    let base = coordinator.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws/{room}")
}

fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}

/// Records until the duration passes, `stop` resolves, or the recorder leaves the room;
/// returns the manifest (also written to `out/manifest.json`).
///
/// # Errors
/// Joining, getting the keys, or opening the SFU session failed; or the output directory
/// cannot be created.
pub async fn record(
    opts: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Manifest, RecordError> {
    std::fs::create_dir_all(&opts.out).map_err(|e| RecordError::Out(opts.out.clone(), e))?;
    let member = RoomMember::join(
        &ws_url(&opts.coordinator, &opts.room),
        &opts.token,
        &opts.name,
    )
    .await?;
    let me = member.view().participant_id;
    info!(participant_id = me, "joined; waiting for the group's keys");
    let view = member
        .wait_for(opts.join_timeout, |v| {
            v.phase == "member" && v.epoch.is_some()
        })
        .await
        .map_err(|v| RecordError::NoKeys(opts.join_timeout, v.phase))?;
    // Everyone must be able to see that this participant records: without the coordinator's
    // recorder mark (its own `joined` entry, which precedes the group's commit), leave.
    let marked = member
        .wait_for(Duration::from_secs(5), |v| {
            v.roster.participants.get(&me).is_some_and(|p| p.recorder)
        })
        .await;
    if marked.is_err() {
        member.leave().await;
        return Err(RecordError::NotRecorder);
    }
    let mut config = BotConfig::new(&opts.coordinator, "", &view.resume_token);
    config.api_base = Some(format!("{}/sfu", opts.coordinator.trim_end_matches('/')));
    config.participant.send_on_publish = false;
    config.participant.request_keyframes = false;
    let bot = Bot::connect_with(config).await?;
    let mut rtp = bot.tap_rtp().await?;
    let start = Instant::now();
    let started_at_ms = unix_ms();
    info!(session = bot.session_id(), "recording");
    let deadline = opts.duration.map(|d| start + d);

    let mut recordings: BTreeMap<String, Recording> = BTreeMap::new();
    let mut pulled: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut participants: BTreeMap<u64, ParticipantSeen> = BTreeMap::new();
    let mut safety: Vec<SafetySeen> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    let ended_because = loop {
        tokio::select! {
            () = &mut stop => break "stopped".to_owned(),
            p = rtp.recv() => match p {
                Some(p) => on_packet(&member, &mut recordings, p, start).await,
                None => break "the media connection ended".to_owned(),
            },
            _ = tick.tick() => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break "duration reached".to_owned();
                }
                let v = member.view();
                // Removed, replaced, timed out or refused a resume: the recording ends (a
                // network loss is resumed by the member and the recording goes on).
                if let Some((code, reason)) = v.closed.as_ref()
                    && [
                        close::NORMAL,
                        close::UNAUTHORIZED,
                        close::REMOVED,
                        close::PRESENCE_TIMEOUT,
                        close::REPLACED,
                        close::RESUME_FAILED,
                    ]
                    .contains(code)
                {
                    break format!("left the room ({code} {reason})");
                }
                if let (Some(epoch), Some(sn)) = (v.epoch, v.safety_number.clone())
                    && safety.last().is_none_or(|s| s.epoch != epoch || s.safety_number != sn)
                {
                    safety.push(SafetySeen { epoch, safety_number: sn, seen_at_ms: unix_ms() });
                }
                let mut wanted = Vec::new();
                for p in v.roster.participants.values() {
                    participants.entry(p.id).or_insert_with(|| ParticipantSeen {
                        id: p.id,
                        name: p.name.clone(),
                        host: p.host,
                        recorder: p.recorder,
                    });
                    if p.id == me {
                        continue;
                    }
                    for t in &p.tracks {
                        let key = (t.session_id.clone(), t.track_name.clone());
                        if !pulled.contains_key(&key) {
                            wanted.push((p.id, p.name.clone(), t.clone()));
                        }
                    }
                }
                for (id, name, t) in wanted {
                    match bot.subscribe(&t.session_id, &t.track_name).await {
                        Ok(sub) => {
                            info!(mid = %sub.mid, participant = id, track = %t.track_name, "pulling");
                            pulled.insert((t.session_id.clone(), t.track_name.clone()), ());
                            let (codec, ext) = match t.kind {
                                TrackKind::Audio => (Codec::Opus, "opus"),
                                TrackKind::Video | TrackKind::Screenshare => (Codec::Vp8, "vp8"),
                            };
                            let file = format!(
                                "p{id}-{}-{}-{ext}.webm",
                                safe_name(&name),
                                safe_name(&t.track_name)
                            );
                            recordings.insert(sub.mid.clone(), Recording {
                                entry: TrackEntry {
                                    file: Some(file.clone()),
                                    participant_id: id,
                                    participant_name: name,
                                    session_id: t.session_id.clone(),
                                    track_name: t.track_name.clone(),
                                    kind: match t.kind {
                                        TrackKind::Audio => "audio",
                                        TrackKind::Video => "video",
                                        TrackKind::Screenshare => "screenshare",
                                    }.to_owned(),
                                    codec: match codec { Codec::Vp8 => "VP8", Codec::Opus => "Opus" }.to_owned(),
                                    frames: 0,
                                    keyframes: 0,
                                    decrypt_failures: 0,
                                    lost_frames: 0,
                                    before_keyframe: 0,
                                    first_frame_ms: None,
                                    last_frame_ms: None,
                                    width: None,
                                    height: None,
                                    keyframe_requests: 0,
                                },
                                codec,
                                file: TrackFile::new(&opts.out.join(&file), codec),
                                assembler: vp8::Assembler::default(),
                                timeline: Timeline::new(codec.clock_rate()),
                                audio_ts: None,
                                last_pli: None,
                            });
                        }
                        Err(e) => warn!(track = %t.track_name, "pull failed (retrying): {e}"),
                    }
                }
                // Video without a keyframe yet: ask for one every second.
                let now = Instant::now();
                for (mid, r) in &mut recordings {
                    if r.codec == Codec::Vp8
                        && !r.file.started()
                        && r.last_pli.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        r.last_pli = Some(now);
                        if bot.request_keyframe(mid).await.unwrap_or(false) {
                            r.entry.keyframe_requests += 1;
                        }
                    }
                }
            }
        }
    };
    let ended_at_ms = unix_ms();
    info!(%ended_because, "stopping");
    let _ = bot.shutdown().await;
    let mut tracks = Vec::new();
    for (_, r) in recordings {
        let mut r = r;
        let rest = r.timeline.flush();
        r.write(rest);
        let Recording {
            mut entry,
            file,
            assembler,
            ..
        } = r;
        entry.frames = file.frames;
        entry.keyframes = file.keyframes;
        entry.before_keyframe = file.waiting;
        entry.lost_frames = assembler.lost;
        entry.first_frame_ms = file.first_ns.map(|n| n / 1_000_000);
        entry.last_frame_ms = file.last_ns().map(|n| n / 1_000_000);
        entry.width = file.size.map(|s| s.0);
        entry.height = file.size.map(|s| s.1);
        match file.finish() {
            Ok(true) => {}
            Ok(false) => entry.file = None,
            Err(e) => {
                warn!("{e}");
                entry.file = None;
            }
        }
        tracks.push(entry);
    }
    let manifest = Manifest {
        room: opts.room.clone(),
        recorder_id: me,
        recorder_name: opts.name.clone(),
        started_at_ms,
        ended_at_ms,
        ended_because,
        participants: participants.into_values().collect(),
        tracks,
        safety_numbers: safety,
    };
    write_manifest(&opts.out, &manifest);
    member.leave().await;
    Ok(manifest)
}

fn write_manifest(out: &Path, manifest: &Manifest) {
    match serde_json::to_vec_pretty(manifest) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(out.join("manifest.json"), bytes) {
                warn!("writing manifest.json: {e}");
            }
        }
        Err(e) => warn!("encoding the manifest: {e}"),
    }
}

async fn on_packet(
    member: &RoomMember,
    recordings: &mut BTreeMap<String, Recording>,
    p: TappedRtp,
    start: Instant,
) {
    let Some(r) = recordings.get_mut(&p.mid) else {
        return;
    };
    let frames = match r.codec {
        Codec::Vp8 => r.assembler.push(p.seq, p.timestamp, p.marker, &p.payload),
        Codec::Opus => {
            let ext = r.audio_ext(p.timestamp);
            vec![(ext, p.payload)]
        }
    };
    for (ts, sealed) in frames {
        let video = r.codec == Codec::Vp8;
        let Some(plain) = member.decrypt(r.entry.participant_id, video, sealed).await else {
            r.entry.decrypt_failures += 1;
            continue;
        };
        let arrived = i64::try_from(p.arrived.saturating_duration_since(start).as_nanos())
            .unwrap_or(i64::MAX);
        let due = r.timeline.push(ts, arrived, plain);
        r.write(due);
    }
}
