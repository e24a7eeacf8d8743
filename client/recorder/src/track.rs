//! One recorded track: decrypted frames in, one WebM file out (libwebm through the `webm`
//! crate). The file is created with the first frame that can start it (a VP8 keyframe, whose
//! header gives the size; any Opus packet) and finalized by [`TrackFile::finish`].

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use thiserror::Error;
use webm::mux::{
    AudioCodecId, AudioTrack, Segment, SegmentBuilder, VideoCodecId, VideoTrack, Writer,
};

use crate::vp8;

/// Why a track could not be written.
#[derive(Debug, Error)]
pub enum TrackError {
    /// The file could not be created.
    #[error("creating {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// libwebm refused a step.
    #[error("muxing {path}: {what}")]
    Mux {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}

/// The codec of a recorded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// VP8 video (RTP clock 90 kHz).
    Vp8,
    /// Opus audio (RTP clock 48 kHz).
    Opus,
}

impl Codec {
    /// The RTP clock rate.
    #[must_use]
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Vp8 => 90_000,
            Self::Opus => 48_000,
        }
    }
}

/// The `OpusHead` a Matroska Opus track carries as CodecPrivate (RFC 7845 §5.1): version 1,
/// 2 channels (WebRTC Opus is negotiated as stereo), no pre-skip, 48 kHz, no gain, mapping 0.
#[must_use]
pub fn opus_head() -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(2);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

enum Track {
    Video(VideoTrack),
    Audio(AudioTrack),
}

/// A WebM file being written for one track.
pub struct TrackFile {
    path: PathBuf,
    codec: Codec,
    open: Option<(Segment<BufWriter<File>>, Track)>,
    last_ns: Option<u64>,
    /// Frames written.
    pub frames: u64,
    /// Keyframes written (video).
    pub keyframes: u64,
    /// Frames dropped before the first keyframe (video).
    pub waiting: u64,
    /// The size of the first keyframe (video).
    pub size: Option<(u32, u32)>,
    /// Timestamps of the first and last frame written (ns from the recording's start).
    pub first_ns: Option<u64>,
}

impl std::fmt::Debug for TrackFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackFile")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl TrackFile {
    /// A track to be written to `path` (created with its first usable frame).
    #[must_use]
    pub fn new(path: &Path, codec: Codec) -> Self {
        Self {
            path: path.to_owned(),
            codec,
            open: None,
            last_ns: None,
            frames: 0,
            keyframes: 0,
            waiting: 0,
            size: None,
            first_ns: None,
        }
    }

    /// Whether the file has started (video: a keyframe arrived).
    #[must_use]
    pub fn started(&self) -> bool {
        self.open.is_some()
    }

    /// The last timestamp written (ns from the recording's start).
    #[must_use]
    pub fn last_ns(&self) -> Option<u64> {
        self.last_ns
    }

    fn mux_error(&self, what: impl std::fmt::Display) -> TrackError {
        TrackError::Mux {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    fn start(&mut self, frame: &[u8]) -> Result<bool, TrackError> {
        if self.codec == Codec::Vp8 && vp8::keyframe_size(frame).is_none() {
            return Ok(false);
        }
        let file = File::create(&self.path).map_err(|source| TrackError::Create {
            path: self.path.clone(),
            source,
        })?;
        let builder = SegmentBuilder::new(Writer::new(BufWriter::new(file)))
            .and_then(|b| b.set_writing_app("satsuma-record"))
            .map_err(|e| self.mux_error(e))?;
        let (builder, track) = match self.codec {
            Codec::Vp8 => {
                let Some((w, h)) = vp8::keyframe_size(frame) else {
                    return Ok(false);
                };
                self.size = Some((w, h));
                let (b, t) = builder
                    .add_video_track(w, h, VideoCodecId::VP8, None)
                    .map_err(|e| self.mux_error(e))?;
                (b, Track::Video(t))
            }
            Codec::Opus => {
                let (b, t) = builder
                    .add_audio_track(48_000, 2, AudioCodecId::Opus, None)
                    .map_err(|e| self.mux_error(e))?;
                let b = b
                    .set_codec_private(t, &opus_head())
                    .map_err(|e| self.mux_error(e))?;
                (b, Track::Audio(t))
            }
        };
        self.open = Some((builder.build(), track));
        Ok(true)
    }

    /// Writes one decrypted frame at `ns` from the recording's start. A video frame before
    /// the first keyframe is dropped (counted in `waiting`); a timestamp not after the last
    /// one is moved 1 µs after it (the muxer needs them increasing).
    ///
    /// # Errors
    /// The file could not be created or libwebm refused the frame.
    pub fn write(&mut self, frame: &[u8], ns: u64) -> Result<(), TrackError> {
        if frame.is_empty() {
            return Ok(());
        }
        if self.open.is_none() && !self.start(frame)? {
            self.waiting += 1;
            return Ok(());
        }
        let ns = match self.last_ns {
            Some(last) if ns <= last => last + 1_000,
            _ => ns,
        };
        let key = match self.codec {
            Codec::Vp8 => vp8::is_keyframe(frame),
            Codec::Opus => true,
        };
        let result = match self.open.as_mut() {
            Some((segment, Track::Video(t))) => segment.add_frame(*t, frame, ns, key),
            Some((segment, Track::Audio(t))) => segment.add_frame(*t, frame, ns, key),
            None => return Ok(()),
        };
        result.map_err(|e| self.mux_error(e))?;
        self.first_ns.get_or_insert(ns);
        self.last_ns = Some(ns);
        self.frames += 1;
        if key && self.codec == Codec::Vp8 {
            self.keyframes += 1;
        }
        Ok(())
    }

    /// Finalizes the file (cues, duration); `Ok(false)` if nothing was ever written (no
    /// file).
    ///
    /// # Errors
    /// libwebm could not finalize it.
    pub fn finish(mut self) -> Result<bool, TrackError> {
        let Some((segment, _)) = self.open.take() else {
            return Ok(false);
        };
        match segment.finalize(None) {
            Ok(writer) => {
                let mut inner = writer.into_inner();
                std::io::Write::flush(&mut inner).map_err(|e| self.mux_error(e))?;
                Ok(true)
            }
            Err(_) => Err(self.mux_error("finalize failed")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn opus_head_is_19_bytes() {
        let h = opus_head();
        assert_eq!(h.len(), 19);
        assert_eq!(&h[..8], b"OpusHead");
    }

    #[test]
    fn video_waits_for_a_keyframe_and_nothing_written_means_no_file() {
        let dir = std::env::temp_dir().join(format!("rec-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.webm");
        let mut t = TrackFile::new(&path, Codec::Vp8);
        t.write(&[0x01, 0, 0, 1, 2, 3], 0).unwrap();
        assert!(!t.started());
        assert_eq!(t.waiting, 1);
        assert!(!t.finish().unwrap());
        assert!(!path.exists());
        let mut key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        key.extend_from_slice(&64u16.to_le_bytes());
        key.extend_from_slice(&48u16.to_le_bytes());
        key.extend_from_slice(&[0; 32]);
        let mut t = TrackFile::new(&path, Codec::Vp8);
        t.write(&key, 5_000_000).unwrap();
        t.write(&[0x01, 1, 2, 3], 5_000_000).unwrap();
        assert_eq!((t.frames, t.keyframes, t.size), (2, 1, Some((64, 48))));
        assert_eq!(t.last_ns(), Some(5_001_000));
        assert!(t.finish().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], &[0x1a, 0x45, 0xdf, 0xa3], "EBML magic");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
