// This participant's own media: camera and microphone (with device choice),
// screen share, and voice activity for the active-speaker highlight.

export class LocalMedia {
  constructor() {
    this.audio = null;
    this.video = null;
    this.screen = null;
    this.problem = null;
    this.vadTimer = null;
    this.audioContext = null;
  }

  /**
   * Opens camera and microphone. A refusal (denied permission, no device) is
   * not fatal: whatever could be opened is kept and `problem` says what not.
   */
  async open({ cameraId, micId, width = 640, height = 480, frameRate } = {}) {
    this.stop();
    this.problem = null;
    const audio = micId ? { deviceId: { exact: micId } } : true;
    const size = { width: { ideal: width }, height: { ideal: height }, ...(frameRate ? { frameRate: { ideal: frameRate } } : {}) };
    const video = cameraId ? { deviceId: { exact: cameraId }, ...size } : size;
    const attempts = [{ audio, video }, { audio }, { video }];
    let firstError = null;
    for (const constraints of attempts) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints);
        this.audio = stream.getAudioTracks()[0] ?? null;
        this.video = stream.getVideoTracks()[0] ?? null;
        break;
      } catch (err) {
        firstError ??= err;
      }
    }
    if (!this.audio || !this.video) {
      const missing = [!this.video && 'camera', !this.audio && 'microphone'].filter(Boolean).join(' and ');
      const why = firstError?.name === 'NotAllowedError' ? 'permission was denied'
        : firstError?.name === 'NotFoundError' ? 'no device was found'
        : firstError ? `${firstError.name}: ${firstError.message}` : 'unavailable';
      this.problem = `No ${missing}: ${why}. You can still join to watch and listen; allow access in the browser's site settings and rejoin to send.`;
    }
    return this;
  }

  /** Lists cameras and microphones: `{cameras: [{id, label}], mics: [...]}`. */
  async devices() {
    const all = await navigator.mediaDevices.enumerateDevices().catch(() => []);
    const pick = (kind) => all.filter((d) => d.kind === kind).map((d, i) => ({ id: d.deviceId, label: d.label || `${kind} ${i + 1}` }));
    return { cameras: pick('videoinput'), mics: pick('audioinput') };
  }

  /** Starts a screen share; resolves with the track or null if refused. */
  async startScreen() {
    try {
      const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
      this.screen = stream.getVideoTracks()[0] ?? null;
      return this.screen;
    } catch (err) {
      this.problem = `Screen share: ${err.name === 'NotAllowedError' ? 'not allowed' : err.message}`;
      return null;
    }
  }

  stopScreen() {
    this.screen?.stop();
    this.screen = null;
  }

  /** Calls `onChange(speaking)` when the microphone's level crosses a threshold. */
  watchVoice(onChange) {
    if (!this.audio || this.vadTimer) return;
    try {
      // 'playback': the largest render quantum the platform allows, so the audio thread wakes
      // up a few times less often; the detector reads the level every 150 ms anyway.
      this.audioContext = new AudioContext({ latencyHint: 'playback' });
      const source = this.audioContext.createMediaStreamSource(new MediaStream([this.audio]));
      const analyser = this.audioContext.createAnalyser();
      analyser.fftSize = 512;
      source.connect(analyser);
      const buf = new Float32Array(analyser.fftSize);
      let speaking = false;
      let lastLoud = 0;
      this.vadTimer = setInterval(() => {
        analyser.getFloatTimeDomainData(buf);
        let sum = 0;
        for (const v of buf) sum += v * v;
        const rms = Math.sqrt(sum / buf.length);
        const now = performance.now();
        if (rms > 0.02 && this.audio?.enabled) lastLoud = now;
        const next = now - lastLoud < 800;
        if (next !== speaking) {
          speaking = next;
          onChange(speaking);
        }
      }, 150);
    } catch {
      // No audio context: no speaking indicator for our own voice.
    }
  }

  stop() {
    clearInterval(this.vadTimer);
    this.vadTimer = null;
    this.audioContext?.close().catch(() => {});
    this.audioContext = null;
    this.audio?.stop();
    this.video?.stop();
    this.stopScreen();
    this.audio = null;
    this.video = null;
  }
}
